//! The reconcile loop on the memory dataplane: latest snapshot wins, drift
//! and periodic resyncs repair, failed applies back off and keep the kernel,
//! unusable views are refused, feedback says what happened.

use edgenet_agent::render::render_snapshot;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use edgenet_agent::dataplane::MemoryDataplane;
use edgenet_agent::ops::metrics::Metrics;
use edgenet_agent::reconcile::{Applied, ReconcileError, ReconcileSettings, Reconciler};
use edgenet_agent::snapshot::Feedback;
use edgenet_agent::snapshot::Snapshot;
use serde_json::{json, Value};
use tokio::sync::watch;
use tokio::task::JoinHandle;

const NODE: &str = "nc-1";

fn sample_model() -> Value {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/cloud.json");
    serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
}

fn snapshot_with_route(destination: Option<&str>) -> Arc<Snapshot> {
    let mut model = sample_model();
    if let Some(destination) = destination {
        model["routes"].as_array_mut().unwrap().push(json!({
            "node": NODE, "destination": destination, "gateway": "10.1.0.254"
        }));
    }
    let model = edgenet_model::parse_model(&serde_json::to_vec(&model).unwrap()).unwrap();
    let view = edgenet_model::view_for(&model, NODE).unwrap();
    let id = view.state_id().as_str().to_string();
    Arc::new(Snapshot::from_view(NODE, id, &view))
}

struct Loop {
    dataplane: MemoryDataplane,
    metrics: Arc<Metrics>,
    snapshots: watch::Sender<Option<Arc<Snapshot>>>,
    feedback: watch::Receiver<Feedback>,
    stop: watch::Sender<bool>,
    task: JoinHandle<Result<Option<Applied>, ReconcileError>>,
}

fn start(resync: Duration) -> Loop {
    let dataplane = MemoryDataplane::new();
    let metrics = Metrics::new();
    let mut settings = ReconcileSettings::new(NODE);
    settings.resync = resync;
    settings.backoff_min = Duration::from_millis(50);
    settings.backoff_max = Duration::from_millis(200);
    let (reconciler, feedback) =
        Reconciler::new(settings, Box::new(dataplane.clone()), metrics.clone());
    let (snapshots, snapshot_rx) = watch::channel(None);
    let (stop, stop_rx) = watch::channel(false);
    let task = tokio::spawn(reconciler.run(snapshot_rx, stop_rx));
    Loop {
        dataplane,
        metrics,
        snapshots,
        feedback,
        stop,
        task,
    }
}

impl Loop {
    fn applied(&self) -> Option<String> {
        self.dataplane.kernel().state_id
    }

    async fn wait_applied(&self, id: &str) {
        eventually(|| self.applied().as_deref() == Some(id)).await;
    }

    async fn stop(self) {
        self.stop.send_replace(true);
        self.task.await.unwrap().unwrap();
    }
}

async fn eventually(condition: impl Fn() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !condition() {
        assert!(tokio::time::Instant::now() < deadline, "condition not met");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn the_latest_snapshot_wins() {
    let agent = start(Duration::from_secs(3600));
    // Three snapshots before the loop gets to run: only the last is applied.
    let a = snapshot_with_route(Some("10.7.0.0/16"));
    let b = snapshot_with_route(Some("10.8.0.0/16"));
    let c = snapshot_with_route(Some("10.9.0.0/16"));
    for snapshot in [a, b, c.clone()] {
        agent.snapshots.send_replace(Some(snapshot));
    }
    agent.wait_applied(&c.state_id).await;
    assert_eq!(agent.dataplane.stats().applies, 1);
    let feedback = agent.feedback.borrow().clone();
    assert_eq!(
        feedback.applied_state_id.as_deref(),
        Some(c.state_id.as_str())
    );
    assert_eq!(feedback.apply_error, None);
    agent.stop().await;
}

#[tokio::test]
async fn a_failed_apply_keeps_the_kernel_and_is_retried_with_backoff() {
    let agent = start(Duration::from_secs(3600));
    let first = snapshot_with_route(None);
    agent.snapshots.send_replace(Some(first.clone()));
    agent.wait_applied(&first.state_id).await;
    let kernel = agent.dataplane.kernel();

    agent.dataplane.fail_next_applies(3);
    let second = snapshot_with_route(Some("10.9.0.0/16"));
    agent.snapshots.send_replace(Some(second.clone()));
    eventually(|| agent.feedback.borrow().apply_error.is_some()).await;
    let failed = agent.feedback.borrow().clone();
    assert_eq!(
        failed.applied_state_id.as_deref(),
        Some(first.state_id.as_str()),
        "the id in force"
    );
    assert!(failed.apply_error.unwrap().contains("apply failed"));
    assert_eq!(
        agent.dataplane.kernel(),
        kernel,
        "nothing applied by a failure"
    );

    agent.wait_applied(&second.state_id).await;
    let stats = agent.dataplane.stats();
    assert_eq!(stats.failed_applies, 3);
    assert!(stats.reads >= 4, "each retry is a full resync: {stats:?}");
    eventually(|| agent.feedback.borrow().apply_error.is_none()).await;
    assert!(agent
        .metrics
        .render()
        .contains("edgenetd_apply_failures_total 3"));
    agent.stop().await;
}

#[tokio::test]
async fn an_unusable_view_is_refused_and_reported() {
    let agent = start(Duration::from_secs(3600));
    let first = snapshot_with_route(None);
    agent.snapshots.send_replace(Some(first.clone()));
    agent.wait_applied(&first.state_id).await;
    let kernel = agent.dataplane.kernel();

    let unusable = Arc::new(Snapshot {
        node: NODE.into(),
        state_id: "v1-ffffffffffffffffffffffffffffffff".into(),
        view: None,
        left_out: vec!["schema: unsupported schema 99".into()],
        removed_instances: Vec::new(),
    });
    agent.snapshots.send_replace(Some(unusable));
    eventually(|| agent.feedback.borrow().apply_error.is_some()).await;
    let feedback = agent.feedback.borrow().clone();
    assert_eq!(
        feedback.applied_state_id.as_deref(),
        Some(first.state_id.as_str())
    );
    assert!(feedback
        .apply_error
        .unwrap()
        .contains("unsupported schema 99"));
    assert_eq!(agent.dataplane.kernel(), kernel);
    agent.stop().await;
}

#[tokio::test]
async fn drift_events_trigger_a_repair() {
    let agent = start(Duration::from_secs(3600));
    let first = snapshot_with_route(None);
    agent.snapshots.send_replace(Some(first.clone()));
    agent.wait_applied(&first.state_id).await;
    let kernel = agent.dataplane.kernel();

    agent.dataplane.tamper(|k| {
        k.routes.clear();
    });
    eventually(|| agent.dataplane.kernel() == kernel).await;
    assert_eq!(agent.metrics.drift_repairs(), 1);
    agent.stop().await;
}

#[tokio::test]
async fn the_periodic_resync_repairs_what_no_event_reported() {
    let agent = start(Duration::from_millis(200));
    let first = snapshot_with_route(None);
    agent.snapshots.send_replace(Some(first.clone()));
    agent.wait_applied(&first.state_id).await;
    let kernel = agent.dataplane.kernel();

    // nftables changes send no event (as on Linux): only a resync sees them.
    agent.dataplane.tamper(|k| {
        k.tables.clear();
    });
    assert_ne!(agent.dataplane.kernel(), kernel);
    eventually(|| agent.dataplane.kernel() == kernel).await;
    assert!(agent.metrics.drift_repairs() >= 1);
    // Resyncs with nothing to repair apply nothing.
    let applies = agent.dataplane.stats().applies;
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(agent.dataplane.stats().applies, applies);
    assert!(agent.dataplane.stats().reads >= 3);
    agent.stop().await;
}

#[tokio::test]
async fn once_stops_after_the_first_apply() {
    let dataplane = MemoryDataplane::new();
    let mut settings = ReconcileSettings::new(NODE);
    settings.once = true;
    let (reconciler, _feedback) =
        Reconciler::new(settings, Box::new(dataplane.clone()), Metrics::new());
    let first = snapshot_with_route(None);
    let (_snapshots, snapshot_rx) = watch::channel(Some(first.clone()));
    let (_stop, stop_rx) = watch::channel(false);
    // The channel already holds a value: mark it unseen so the loop takes it.
    let mut snapshot_rx = snapshot_rx;
    snapshot_rx.mark_changed();
    let applied = reconciler.run(snapshot_rx, stop_rx).await.unwrap().unwrap();
    assert_eq!(applied.state_id, first.state_id);
    assert!(applied.changes > 0);
}

/// A view with one bad instance: the rest is applied under the view's id,
/// and ApplyError names what was left out (docs/protocol.md feedback).
#[tokio::test]
async fn a_partly_invalid_view_is_applied_without_the_bad_entity() {
    let agent = start(Duration::from_secs(3600));
    let model = edgenet_model::parse_model(&serde_json::to_vec(&sample_model()).unwrap()).unwrap();
    let mut view = edgenet_model::view_for(&model, NODE).unwrap();
    let bad = view.instances[0].id.clone();
    view.instances[0].private_ip = "192.0.2.1".into();
    let snapshot = Arc::new(Snapshot::from_view(NODE, "v1-partly".into(), &view));
    assert!(snapshot.view.is_some());
    assert!(!snapshot.left_out.is_empty());
    agent.snapshots.send_replace(Some(snapshot));
    agent.wait_applied("v1-partly").await;
    eventually(|| agent.feedback.borrow().apply_error.is_some()).await;
    let feedback = agent.feedback.borrow().clone();
    assert_eq!(feedback.applied_state_id.as_deref(), Some("v1-partly"));
    let error = feedback.apply_error.unwrap();
    assert!(
        error.starts_with("left out: ") && error.contains(&bad),
        "{error}"
    );
    let kernel = agent.dataplane.kernel();
    assert!(!kernel.routes.is_empty(), "the rest is applied");
    agent.stop().await;
}

/// The model with `change` made to it, as the node's snapshot.
fn snapshot_of(change: impl FnOnce(&mut Value)) -> Arc<Snapshot> {
    let mut model = sample_model();
    change(&mut model);
    let model = edgenet_model::parse_model(&serde_json::to_vec(&model).unwrap()).unwrap();
    let view = edgenet_model::view_for(&model, NODE).unwrap();
    let id = view.state_id().as_str().to_string();
    Arc::new(Snapshot::from_view(NODE, id, &view))
}

/// Launching and terminating instances renders only those instances
/// (`edgenet_agent::incremental`), and leaves the kernel exactly as a full
/// render of the same view would; a change to anything else renders in full.
#[tokio::test]
async fn instance_changes_render_incrementally_and_end_as_a_full_render_would() {
    let agent = start(Duration::from_secs(3600));
    let launched = json!({
        "id": "i-0a1b2c99", "node": NODE, "subnet": "subnet-a", "interface": "vn_i-0a1b2c99",
        "mac": "d0:0d:0a:1b:2c:99", "private_ip": "10.1.0.99", "public_ip": "203.0.113.9",
        "security_groups": ["sg-web"]
    });
    let steps = [
        snapshot_of(|_| {}),
        snapshot_of(|m| {
            m["instances"]
                .as_array_mut()
                .unwrap()
                .push(launched.clone())
        }),
        snapshot_of(|m| {
            let instances = m["instances"].as_array_mut().unwrap();
            instances.push(launched.clone());
            instances.remove(0);
        }),
        snapshot_of(|m| {
            m["instances"].as_array_mut().unwrap().remove(0);
            m["routes"].as_array_mut().unwrap().push(json!({
                "node": NODE, "destination": "10.77.0.0/16", "gateway": "10.1.0.254"
            }));
        }),
    ];
    for snapshot in &steps {
        agent.snapshots.send_replace(Some(snapshot.clone()));
        agent.wait_applied(&snapshot.state_id).await;
        let full = render_snapshot(snapshot, &Default::default())
            .unwrap()
            .desired;
        let kernel = agent.dataplane.kernel();
        let left = edgenet_agent::diff::diff(&kernel, &full);
        assert!(
            left.is_empty(),
            "{}:\n{}",
            snapshot.state_id,
            left.render_text(NODE, None, "full")
        );
    }
    // The first and the last pass render in full, the two between do not.
    assert_eq!(agent.metrics.render_passes(), (2, 2));
    agent.stop().await;
}
