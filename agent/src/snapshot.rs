//! What flows down the agent and what flows back up: the [`Snapshot`] a
//! source publishes for the reconcile loop (only the latest one counts,
//! which is "latest snapshot wins while an apply runs"), and the
//! [`Feedback`] the loop hands back to the poller for the next request.

use std::collections::HashSet;
use std::sync::Arc;

use edgenet_model::{sanitize_view, Instance, NodeView};
use tokio::sync::watch;

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
    /// Validates `view` the way an agent must (docs/model.md): leave out what is
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
}

/// The channel the sources publish into. `None` until the first snapshot.
pub type SnapshotSender = watch::Sender<Option<Arc<Snapshot>>>;
pub type SnapshotReceiver = watch::Receiver<Option<Arc<Snapshot>>>;

/// What the reconcile loop tells the server through the next poll.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Feedback {
    /// `AppliedStateId`: the state in force in the kernel.
    pub applied_state_id: Option<String>,
    /// `ApplyError`: what could not be applied (or was left out).
    pub apply_error: Option<String>,
}

pub type FeedbackReceiver = watch::Receiver<Feedback>;

#[cfg(test)]
mod tests {
    use std::path::Path;

    use edgenet_model::{parse_model, view_for};

    use super::*;

    fn example() -> std::path::PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/cloud.json")
    }

    /// docs/model.md: an instance that fails validation gets no access. Gone
    /// from the view, its address must still meet a `drop`, never no rule.
    #[test]
    fn an_invalid_instance_fails_closed() {
        use crate::render::instances_map_name;
        use crate::state::{Family, TableId, DROP_VALUE};

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

        let rendered = crate::render::render_snapshot(&snapshot, &Default::default()).unwrap();
        let inet = &rendered.desired.tables[&TableId::ours(Family::Inet)];
        let verdicts = &inet.sets[&instances_map_name(crate::state::IpFamily::V4)].elements;
        assert_eq!(verdicts[invalid_ip.as_str()].as_deref(), Some(DROP_VALUE));
        let valid_ip = &view.instances[1].private_ip;
        assert_ne!(verdicts[valid_ip.as_str()].as_deref(), Some(DROP_VALUE));
    }
}
