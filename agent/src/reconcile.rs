//! The level-triggered control loop: desired state (rendered from the latest
//! snapshot) against the kernel's actual state, until they agree.
//!
//! - The latest snapshot wins: snapshots arrive through a `watch` channel,
//!   so those that come while an apply runs are folded into the newest.
//! - The actual state is read in full at start, after any failure, on a
//!   drift event and at each periodic resync (60 s ± 10 %); in between it
//!   is kept current from our own successful writes.
//! - Fail static: nothing but a valid view changes what is applied. An
//!   unusable view, a failed read or a failed apply keeps the kernel as it
//!   is, and the apply is retried with backoff as a full resync.

use crate::render::render_snapshot;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::Rng;
use tokio::sync::{mpsc, watch};

use crate::dataplane::{Dataplane, DataplaneError};
use crate::diff::{diff, ChangeSet};
use crate::ops::heap;
use crate::ops::metrics::Metrics;
use crate::ops::notify::{Heartbeat, SystemdNotifier};
use crate::render::incremental::{self, Baseline};
use crate::render::RenderSettings;
use crate::snapshot::{Feedback, Snapshot, SnapshotReceiver};
use crate::state::{DriftEvent, KernelState};

mod after;

pub use after::forget_rule_statements;
use after::{log_deferred, log_sysctl_problem, name_few, KernelAfter};
use edgenet_model::backoff::Backoff;
use edgenet_model::protocol::{RETRY_BACKOFF_MAX, RETRY_BACKOFF_MIN};

#[derive(Debug, Clone)]
pub struct ReconcileSettings {
    pub node: String,
    pub render: RenderSettings,
    /// Mean period of the full resync; each wait is drawn ± 10 % around it
    /// so that nodes do not resync in step.
    pub resync: Duration,
    /// Stop after the first snapshot is handled (`--once`).
    pub once: bool,
    pub backoff_min: Duration,
    pub backoff_max: Duration,
    /// How often the loop beats its heartbeat while it waits (the
    /// watchdog pings only while the beat is fresh).
    pub heartbeat: Duration,
}

impl ReconcileSettings {
    pub fn new(node: impl Into<String>) -> Self {
        ReconcileSettings {
            node: node.into(),
            render: RenderSettings::default(),
            resync: Duration::from_secs(60),
            once: false,
            backoff_min: RETRY_BACKOFF_MIN,
            backoff_max: RETRY_BACKOFF_MAX,
            heartbeat: Duration::from_secs(1),
        }
    }
}

/// Why the loop stopped with an error (everything else is retried).
#[derive(Debug, thiserror::Error)]
pub enum ReconcileError {
    /// Missing privileges will not go away by retrying.
    #[error(transparent)]
    Fatal(DataplaneError),
    #[error("the snapshot source ended before any snapshot could be applied")]
    NoSnapshot,
}

/// What the loop did with one snapshot (for `--once`, tests and status).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Applied {
    pub state_id: String,
    /// Kernel changes made.
    pub changes: usize,
    pub left_out: Vec<String>,
}

/// The control loop, owning the dataplane.
pub struct Reconciler {
    settings: ReconcileSettings,
    dataplane: Box<dyn Dataplane>,
    metrics: Arc<Metrics>,
    feedback: watch::Sender<Feedback>,
    notifier: SystemdNotifier,
    heartbeat: Heartbeat,
    /// The kernel as we believe it is; `None` = read it in full first.
    actual: Option<KernelState>,
    /// What the last apply rendered, for an incremental pass; `None` when
    /// the next pass must render in full (see `crate::incremental`).
    baseline: Option<Baseline>,
    /// The snapshot to converge to (the latest usable one).
    target: Option<Arc<Snapshot>>,
    backoff: Backoff,
    retry_at: Option<tokio::time::Instant>,
    /// Something happened (new target, drift, resync, retry) since the last
    /// successful pass: the next pass must diff.
    dirty: bool,
    /// What render left out of the target's view at the last pass.
    render_left_out: Vec<String>,
    /// Changes the kernel could not take at the last apply, as their diff
    /// lines: retrying them at a resync is not a drift repair.
    deferred: Vec<String>,
    /// Routes of the view another protocol holds, as of the last full
    /// pass: reported through ApplyError.
    route_conflicts: Vec<String>,
    /// What the monitors said vanished since the last successful pass.
    /// A flushed ruleset takes our state id with it, so this, not the id,
    /// tells the repair of the applied state from a first apply.
    drift_seen: Vec<String>,
    /// Each sysctl forwarding needs, with its problem at the last check:
    /// a problem is logged when it appears or changes, not at every pass.
    sysctls: std::collections::BTreeMap<String, Option<String>>,
}

impl Reconciler {
    pub fn new(
        settings: ReconcileSettings,
        dataplane: Box<dyn Dataplane>,
        metrics: Arc<Metrics>,
    ) -> (Self, watch::Receiver<Feedback>) {
        let (feedback, feedback_rx) = watch::channel(Feedback::default());
        let backoff = Backoff::new(settings.backoff_min, settings.backoff_max);
        let reconciler = Reconciler {
            settings,
            dataplane,
            metrics,
            feedback,
            notifier: SystemdNotifier::new(),
            heartbeat: Heartbeat::default(),
            actual: None,
            baseline: None,
            target: None,
            backoff,
            retry_at: None,
            deferred: Vec::new(),
            route_conflicts: Vec::new(),
            drift_seen: Vec::new(),
            sysctls: Default::default(),
            dirty: false,
            render_left_out: Vec::new(),
        };
        (reconciler, feedback_rx)
    }

    /// Reads the kernel once, so the poller can start from the state id
    /// already applied (a restart then re-applies nothing). `None` when the
    /// kernel cannot be read yet: the loop tries again.
    pub async fn read_applied_state_id(&mut self) -> Result<Option<String>, ReconcileError> {
        match self.dataplane.read().await {
            Ok(state) => {
                let id = state.state_id.clone();
                if let Some(id) = &id {
                    self.feedback.send_replace(Feedback {
                        applied_state_id: Some(id.clone()),
                        apply_error: None,
                    });
                }
                self.actual = Some(state);
                Ok(id)
            }
            Err(error) if !error.is_retryable() => Err(ReconcileError::Fatal(error)),
            Err(error) => {
                tracing::warn!(%error, "cannot read the kernel state yet");
                Ok(None)
            }
        }
    }

    /// The loop's heartbeat, for the watchdog.
    pub fn heartbeat(&self) -> Heartbeat {
        self.heartbeat.clone()
    }

    /// At start, before any view: READY, with a STATUS saying what the node
    /// runs on. A controller that is down must not time the start out (the
    /// unit would restart every start timeout, never tripping its start
    /// limit), so READY does not wait for a view: on a restart the kernel's
    /// applied state is adopted (fail static), and a first boot says it
    /// waits for its first view. `held`: the state id the kernel holds.
    pub fn announce_start(&mut self, held: Option<&str>) {
        let status = match held {
            Some(id) => format!("running on the last applied state {id}; waiting for the view"),
            None => "waiting for the first view: nothing applied yet".to_string(),
        };
        tracing::info!("{status}");
        self.notifier.ready(&status);
    }

    /// Runs until `shutdown` turns true (or, with `once`, until the first
    /// snapshot is applied). The kernel is left as it is on return.
    pub async fn run(
        mut self,
        mut snapshots: SnapshotReceiver,
        mut shutdown: watch::Receiver<bool>,
    ) -> Result<Option<Applied>, ReconcileError> {
        let mut drift = self
            .dataplane
            .drift_events()
            .unwrap_or_else(|| mpsc::channel(1).1);
        let mut drift_open = true;
        let mut resync_at = tokio::time::Instant::now() + self.resync_wait();
        let mut last = None;
        let mut beat = tokio::time::interval(self.settings.heartbeat);
        loop {
            self.heartbeat.beat();
            let retry_at = self.retry_at;
            tokio::select! {
                biased;
                _ = shutdown.wait_for(|stop| *stop) => return Ok(last),
                _ = beat.tick() => continue,
                changed = snapshots.changed() => {
                    if changed.is_err() {
                        return if last.is_some() { Ok(last) } else { Err(ReconcileError::NoSnapshot) };
                    }
                    let snapshot = snapshots.borrow_and_update().clone();
                    if let Some(snapshot) = snapshot {
                        self.accept(snapshot);
                    }
                }
                event = drift.recv(), if drift_open => match event {
                    Some(event) => self.on_drift(event, &mut drift),
                    None => drift_open = false,
                },
                _ = tokio::time::sleep_until(resync_at) => {
                    tracing::debug!("periodic resync");
                    self.actual = None;
                    self.dirty = true;
                    resync_at = tokio::time::Instant::now() + self.resync_wait();
                }
                _ = sleep_until_opt(retry_at), if retry_at.is_some() => {
                    self.retry_at = None;
                    self.dirty = true;
                }
            }
            if self.retry_at.is_some() {
                continue;
            }
            if let Some(applied) = self.converge().await? {
                last = Some(applied);
                if self.settings.once {
                    return Ok(last);
                }
            }
        }
    }

    /// Takes a new snapshot as the target, unless nothing in it is usable.
    fn accept(&mut self, snapshot: Arc<Snapshot>) {
        if snapshot.view.is_none() {
            tracing::error!(
                state_id = %snapshot.state_id,
                problems = %snapshot.left_out.join("; "),
                "view unusable; keeping the applied state"
            );
            self.send_feedback(Some(format!(
                "view {} unusable: {}",
                snapshot.state_id,
                snapshot.left_out.join("; ")
            )));
            return;
        }
        self.target = Some(snapshot);
        self.dirty = true;
        // A new target is worth trying at once, even while backing off.
        self.retry_at = None;
    }

    fn on_drift(&mut self, first: DriftEvent, drift: &mut mpsc::Receiver<DriftEvent>) {
        let mut objects = vec![first.object];
        // Events come in bursts (a flushed table): one resync for all.
        while let Ok(more) = drift.try_recv() {
            objects.push(more.object);
        }
        tracing::warn!(
            count = objects.len(),
            "drift detected, resyncing: {}",
            name_few(&objects)
        );
        self.drift_seen.extend(objects);
        self.actual = None;
        self.dirty = true;
    }

    /// One pass: read (if needed), render, diff, apply. Errors are kept in
    /// the loop (backoff), except those retrying cannot fix.
    async fn converge(&mut self) -> Result<Option<Applied>, ReconcileError> {
        let Some(target) = self.target.clone() else {
            return Ok(None);
        };
        if target.view.is_none() {
            return Ok(None);
        }
        if !self.dirty {
            // Nothing happened that could make the kernel differ from the
            // target since the last successful pass.
            return Ok(None);
        }
        let started = Instant::now();
        let outcome = self.apply(&target).await;
        let took = started.elapsed();
        // Everything a full pass allocated beyond the state it keeps (render,
        // diff, the nft transaction, a resync's read-back) is freed by now;
        // an incremental pass allocates too little to be worth the trim.
        if outcome.as_ref().map_or(true, |pass| pass.in_full) {
            heap::release_freed_pages();
        }
        match outcome.map(|pass| pass.changes) {
            Ok(changes) => {
                self.succeeded(&target, changes, took);
                Ok(Some(Applied {
                    state_id: target.state_id.clone(),
                    changes,
                    left_out: self.left_out(&target),
                }))
            }
            Err(error) if !error.is_retryable() => Err(ReconcileError::Fatal(error)),
            Err(error) => {
                self.failed(&error, took);
                Ok(None)
            }
        }
    }

    async fn apply(&mut self, target: &Arc<Snapshot>) -> Result<Pass, DataplaneError> {
        // Only a state kept current by our own writes since the baseline's
        // apply is what the incremental pass assumes; a read starts afresh.
        let baseline = self.baseline.take();
        let actual = match self.actual.take() {
            Some(actual) => actual,
            None => {
                let read = self.dataplane.read().await?;
                return self.apply_in_full(target, read).await;
            }
        };
        let Some(baseline) = baseline else {
            return self.apply_in_full(target, actual).await;
        };
        match incremental::plan(&baseline, target, &self.settings.render, &actual) {
            Ok(fragments) => {
                self.apply_fragments(target, actual, baseline, fragments)
                    .await
            }
            Err(why) => {
                tracing::debug!(state_id = %target.state_id, "rendering the whole view: {why}");
                self.apply_in_full(target, actual).await
            }
        }
    }

    /// The incremental pass: only the changed instances were rendered.
    async fn apply_fragments(
        &mut self,
        target: &Arc<Snapshot>,
        mut actual: KernelState,
        baseline: Baseline,
        fragments: incremental::Fragments,
    ) -> Result<Pass, DataplaneError> {
        let Some(changes) = fragments.changes(&actual) else {
            let why = incremental::InFull::DoesNotFitCachedState;
            tracing::debug!(state_id = %target.state_id, "rendering the whole view: {why}");
            return self.apply_in_full(target, actual).await;
        };
        self.metrics.render_pass(true);
        let state_id = target.state_id.as_str();
        if changes.is_empty() && actual.state_id.as_deref() == Some(state_id) {
            drop(changes);
            self.actual = Some(actual);
            self.baseline = Some(baseline.advance(target.clone(), fragments));
            return Ok(Pass::incremental(0));
        }
        let report = self
            .dataplane
            .apply(&changes, fragments.desired(), state_id)
            .await?;
        log_deferred(&report.deferred);
        changes.apply_to(&mut actual, &report.deferred_changes());
        actual.state_id = Some(state_id.to_string());
        let made = changes.len();
        self.deferred = report.deferred.iter().map(|d| d.change.line()).collect();
        let clean = report.deferred.is_empty();
        drop((report, changes));
        self.actual = Some(actual);
        if clean {
            self.baseline = Some(baseline.advance(target.clone(), fragments));
        }
        Ok(Pass::incremental(made))
    }

    /// The full pass: render the whole view and diff it against `actual`.
    async fn apply_in_full(
        &mut self,
        target: &Arc<Snapshot>,
        actual: KernelState,
    ) -> Result<Pass, DataplaneError> {
        self.check_sysctls();
        let state_id = target.state_id.as_str();
        let Some(rendered) = render_snapshot(target, &self.settings.render) else {
            self.actual = Some(actual);
            return Ok(Pass::in_full(0));
        };
        // What render could not use (beyond what sanitizing left out) is
        // reported through ApplyError like the rest.
        self.render_left_out = rendered.left_out;
        let desired = rendered.desired;
        self.metrics.render_pass(false);
        let baseline = Baseline::after_full_render(target.clone(), rendered.usage);
        let changes = diff(&actual, &desired);
        if changes.is_empty() && actual.state_id.as_deref() == Some(state_id) {
            drop(changes);
            self.actual = Some(actual);
            self.baseline = baseline;
            return Ok(Pass::in_full(0));
        }
        let report = self.dataplane.apply(&changes, &desired, state_id).await?;
        log_deferred(&report.deferred);
        self.metrics
            .route_conflicts_seen(report.route_conflicts.len());
        self.route_conflicts.clone_from(&report.route_conflicts);
        // Changes for the id the kernel already records: someone changed
        // what we had applied, and this put it back.
        let retrying_deferred = !changes.is_empty()
            && changes
                .changes
                .iter()
                .all(|c| self.deferred.contains(&c.line()));
        // Or the monitors saw something of the state in force vanish (with
        // a flushed ruleset, its id too).
        let in_force = self.feedback.borrow().applied_state_id.as_deref() == Some(state_id);
        let seen = !self.drift_seen.is_empty() && in_force;
        if (seen || actual.state_id.as_deref() == Some(state_id)) && !retrying_deferred {
            tracing::warn!(
                changes = changes.len(),
                vanished = %name_few(&self.drift_seen),
                "repaired drift"
            );
            self.metrics.drift_repaired();
        }
        self.deferred = report.deferred.iter().map(|d| d.change.line()).collect();
        if self.deferred.is_empty() {
            self.baseline = baseline;
        }
        let made = changes.len();
        let kept = KernelAfter::new(&actual, &desired, &report.deferred_changes());
        drop((report, changes));
        self.actual = Some(kept.apply(desired, state_id));
        Ok(Pass::in_full(made))
    }

    /// At each full pass: the sysctls forwarding needs, to the metrics and,
    /// when a problem appears or goes, to the log.
    fn check_sysctls(&mut self) {
        for check in self.dataplane.check_sysctls() {
            self.metrics
                .set_sysctl_ok(&check.name, check.problem.is_none());
            let before = self
                .sysctls
                .insert(check.name.clone(), check.problem.clone());
            if before.as_ref() == Some(&check.problem) {
                continue;
            }
            match &check.problem {
                Some(problem) => log_sysctl_problem(&check.name, problem),
                None if before.is_some() => {
                    tracing::info!(sysctl = %check.name, "sysctl {} is as needed now", check.name)
                }
                None => {}
            }
        }
    }

    fn succeeded(&mut self, target: &Snapshot, changes: usize, took: Duration) {
        self.dirty = false;
        self.drift_seen.clear();
        self.backoff.reset();
        let objects = self
            .actual
            .as_ref()
            .map(|a| a.object_counts())
            .unwrap_or_default()
            .into_iter()
            .map(|(kind, n)| (kind.to_string(), n));
        self.metrics
            .apply_succeeded(&target.state_id, took, objects);
        if changes > 0 {
            tracing::info!(state_id = %target.state_id, changes, took_ms = took.as_millis() as u64, "applied");
        }
        let left_out = self.left_out(target);
        let error = (!left_out.is_empty()).then(|| format!("left out: {}", left_out.join("; ")));
        self.applied_feedback(&target.state_id, error);
        self.notifier.ready(&format!(
            "applied {} ({} changes)",
            target.state_id, changes
        ));
    }

    /// Everything of the target's view that is not in the kernel: left out
    /// when the view was sanitized, by render, or held by another protocol.
    fn left_out(&self, target: &Snapshot) -> Vec<String> {
        let mut all = target.left_out.clone();
        all.extend(self.render_left_out.iter().cloned());
        all.extend(self.route_conflicts.iter().cloned());
        all
    }

    fn failed(&mut self, error: &DataplaneError, took: Duration) {
        self.metrics.apply_failed(took);
        // The kernel may be anything now: read it in full before the retry.
        self.actual = None;
        let delay = self.backoff.next_delay();
        self.retry_at = Some(tokio::time::Instant::now() + delay);
        tracing::error!(%error, retry_in = ?delay, "apply failed; kernel state kept, retrying as a full resync");
        self.send_feedback(Some(format!("apply failed: {error}")));
        self.notifier.status(&format!("apply failed: {error}"));
    }

    /// After a (full or partial) apply: the new id, with what was left out.
    fn applied_feedback(&self, state_id: &str, error: Option<String>) {
        let feedback = Feedback {
            applied_state_id: Some(state_id.to_string()),
            apply_error: error,
        };
        self.feedback.send_if_modified(|current| {
            let changed = *current != feedback;
            *current = feedback;
            changed
        });
    }

    /// After a failure: the id still in force, with the error.
    fn send_feedback(&self, error: Option<String>) {
        self.feedback.send_if_modified(|current| {
            let changed = current.apply_error != error;
            current.apply_error = error;
            changed
        });
    }

    fn resync_wait(&self) -> Duration {
        let base = self.settings.resync.as_secs_f64();
        let factor = rand::thread_rng().gen_range(0.9..=1.1);
        Duration::from_secs_f64(base * factor)
    }
}

/// What one pass did: the kernel changes it made, and whether it rendered
/// the whole view (or read the kernel) rather than only what changed.
struct Pass {
    changes: usize,
    in_full: bool,
}

impl Pass {
    fn in_full(changes: usize) -> Pass {
        Pass {
            changes,
            in_full: true,
        }
    }

    fn incremental(changes: usize) -> Pass {
        Pass {
            changes,
            in_full: false,
        }
    }
}

async fn sleep_until_opt(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// `edgenetd apply`: read the kernel, diff, apply once; no retry. Returns
/// docs/cli.md's text diff of the changes made, from the state id that was in
/// force before.
pub async fn apply_once(
    dataplane: &mut dyn Dataplane,
    snapshot: &Snapshot,
    settings: &RenderSettings,
) -> Result<String, DataplaneError> {
    for check in dataplane.check_sysctls() {
        if let Some(problem) = &check.problem {
            log_sysctl_problem(&check.name, problem);
        }
    }
    let actual = dataplane.read().await?;
    let from = actual.state_id.as_deref();
    let Some(rendered) = render_snapshot(snapshot, settings) else {
        return Ok(ChangeSet::default().render_text(&snapshot.node, from, &snapshot.state_id));
    };
    let desired = rendered.desired;
    let changes = diff(&actual, &desired);
    if !changes.is_empty() || from != Some(&snapshot.state_id) {
        let report = dataplane
            .apply(&changes, &desired, &snapshot.state_id)
            .await?;
        log_deferred(&report.deferred);
    }
    Ok(changes.render_text(&snapshot.node, from, &snapshot.state_id))
}
