//! Plans without applying: `plan` (one snapshot against the kernel) and
//! `run --dry-run` (the first snapshot against the kernel, then each
//! snapshot against the previous one).
//!
//! When the kernel cannot be read (no privileges, no nftables), the first
//! diff is against an empty state, with a note on stderr saying so: the
//! README's first command must work on a laptop without root.

use crate::render::render_snapshot;
use std::io::Write;
use std::sync::Arc;

use tokio::sync::watch;

use crate::cli::OutputFormat;
use crate::dataplane::Dataplane;
use crate::diff::entity::Attribution;
use crate::diff::plan::{DeviceCheck, HostDevices, PlanContext, PlanHeader};
use crate::diff::{diff, ChangeSet};
use crate::ops::notify::SystemdNotifier;
use crate::render::RenderSettings;
use crate::snapshot::{Snapshot, SnapshotReceiver};
use crate::state::KernelState;
use edgenet_model::NodeView;

#[derive(Debug, thiserror::Error)]
pub enum DryRunError {
    #[error("cannot write the diff: {0}")]
    Output(#[from] std::io::Error),
    #[error("the snapshot source ended before any snapshot came")]
    NoSnapshot,
    #[error("view {state_id} is unusable: {problems}")]
    Unusable { state_id: String, problems: String },
}

/// The kernel's state as the baseline of the first diff, or an empty state
/// and the reason the kernel could not be read.
pub async fn kernel_baseline(
    dataplane: Option<&mut Box<dyn Dataplane>>,
) -> (KernelState, Option<String>) {
    match dataplane {
        None => (
            KernelState::default(),
            Some("the kernel is not read (--dataplane none)".into()),
        ),
        Some(dataplane) => match dataplane.read().await {
            Ok(state) => (state, None),
            Err(error) => (
                KernelState::default(),
                Some(format!("cannot read the kernel state ({error})")),
            ),
        },
    }
}

/// The state `snapshot` asks for: what a plan diffs its baseline against,
/// and the next baseline. (Not the diff itself: a change set borrows the
/// two states it compares.)
pub fn desired_state(
    snapshot: &Snapshot,
    settings: &RenderSettings,
) -> Result<KernelState, DryRunError> {
    let rendered = render_snapshot(snapshot, settings).ok_or_else(|| DryRunError::Unusable {
        state_id: snapshot.state_id.clone(),
        problems: snapshot.left_out.join("; "),
    })?;
    for left_out in &rendered.left_out {
        tracing::warn!("left out: {left_out}");
    }
    Ok(rendered.desired)
}

pub fn format_diff(
    changes: &ChangeSet,
    header: PlanHeader,
    context: &PlanContext,
    format: OutputFormat,
) -> String {
    match format {
        OutputFormat::Text => changes.render_plan_text(header, context),
        OutputFormat::Json => changes.render_plan_json(header, context),
    }
}

/// How a plan from `from` to `to` names entities and checks devices:
/// devices are checked only when the plan is for this host's kernel.
pub fn plan_context<'a>(
    to: &Snapshot,
    from: Option<&Snapshot>,
    check_devices: bool,
) -> PlanContext<'a> {
    let views: Vec<&NodeView> = [Some(to), from]
        .into_iter()
        .flatten()
        .filter_map(|snapshot| snapshot.view.as_deref())
        .collect();
    PlanContext {
        attribution: Attribution::from_views(&to.node, &views),
        devices: check_devices.then_some(&HostDevices as &dyn DeviceCheck),
    }
}

/// Prints a note to stderr, where it does not spoil a piped diff.
pub fn note(text: &str) {
    eprintln!("note: {text}; showing the diff against an empty state");
}

/// How `run --dry-run` renders and prints.
pub struct DryRunOptions {
    pub settings: RenderSettings,
    pub format: OutputFormat,
    /// Stop after the first diff.
    pub once: bool,
    /// Flag objects on devices this host lacks (a plan for this kernel).
    pub check_devices: bool,
}

/// `run --dry-run`: prints a diff per snapshot until `shutdown` (or after
/// the first with `once`). Returns how many diffs were printed.
pub async fn run_dry(
    mut baseline: KernelState,
    mut snapshots: SnapshotReceiver,
    mut shutdown: watch::Receiver<bool>,
    options: DryRunOptions,
    out: &mut (dyn Write + Send),
) -> Result<usize, DryRunError> {
    let DryRunOptions {
        settings,
        format,
        once,
        check_devices,
    } = options;
    let mut notifier = SystemdNotifier::new();
    let mut printed = 0;
    let mut previous: Option<Arc<Snapshot>> = None;
    loop {
        tokio::select! {
            biased;
            _ = shutdown.wait_for(|stop| *stop) => return Ok(printed),
            changed = snapshots.changed() => {
                if changed.is_err() {
                    return if printed > 0 { Ok(printed) } else { Err(DryRunError::NoSnapshot) };
                }
            }
        }
        let Some(snapshot) = snapshots.borrow_and_update().clone() else {
            continue;
        };
        let context = plan_context(&snapshot, previous.as_deref(), check_devices);
        match print_one(&baseline, &snapshot, &settings, (format, &context), out) {
            Ok(next) => {
                baseline = next;
                previous = Some(snapshot.clone());
                printed += 1;
                notifier.ready(&format!("dry run: planned {}", snapshot.state_id));
                if once {
                    return Ok(printed);
                }
                if printed == 1 {
                    tracing::info!("dry run: waiting for the next snapshot; each one prints its diff (Ctrl-C stops)");
                }
            }
            Err(DryRunError::Unusable { state_id, problems }) => {
                tracing::error!(%state_id, %problems, "view unusable; nothing planned");
            }
            Err(other) => return Err(other),
        }
    }
}

fn print_one(
    baseline: &KernelState,
    snapshot: &Arc<Snapshot>,
    settings: &RenderSettings,
    (format, context): (OutputFormat, &PlanContext),
    out: &mut (dyn Write + Send),
) -> Result<KernelState, DryRunError> {
    let desired = desired_state(snapshot, settings)?;
    let changes = diff(baseline, &desired);
    let header = PlanHeader {
        node: &snapshot.node,
        from: baseline.state_id.as_deref(),
        to: &snapshot.state_id,
    };
    let text = format_diff(&changes, header, context, format);
    out.write_all(text.as_bytes())?;
    out.flush()?;
    // The next plan's baseline keeps its rule statements, so that the
    // rules a chain loses print as text, not as hashes.
    Ok(desired)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::source::snapshot_from_model_file;
    use std::path::Path;

    #[test]
    fn plans_against_empty_then_against_itself() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/cloud.json");
        let snapshot = snapshot_from_model_file(&path, "nc-1").unwrap();
        let settings = RenderSettings::default();
        let desired = desired_state(&snapshot, &settings).unwrap();
        let empty = KernelState::default();
        let changes = diff(&empty, &desired);
        assert!(!changes.is_empty());
        let header = PlanHeader {
            node: "nc-1",
            from: None,
            to: &snapshot.state_id,
        };
        let context = plan_context(&snapshot, None, false);
        let text = format_diff(&changes, header, &context, OutputFormat::Text);
        let first = text.lines().next().unwrap();
        assert!(
            first.starts_with(&format!("nc-1: none -> {}: ", snapshot.state_id)),
            "{first}"
        );
        let again = desired_state(&snapshot, &settings).unwrap();
        assert!(diff(&desired, &again).is_empty());
    }
}
