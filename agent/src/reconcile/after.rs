//! What the loop keeps and logs after a pass: the kernel state it now
//! believes in, and one-line summaries of what it could not do.

use crate::diff::Change;
use crate::state::{AddressEntry, KernelState, RouteKey, RouteSpec};

/// Drops the statements of every rule, keeping their hashes: the diff
/// compares rules by hash only (as read back from the kernel, rules carry
/// no statements either), and the statements of 10,000 instances' chains
/// are most of a cached state's memory.
pub fn forget_rule_statements(state: &mut KernelState) {
    for table in state.tables.values_mut() {
        for chain in table.chains.values_mut() {
            for rule in &mut chain.rules {
                rule.statements = Vec::new();
            }
        }
    }
}

/// What the kernel holds after an apply, built from the desired state
/// rather than by copying the changes into the old actual state: after a
/// successful apply the kernel is the desired state, except for the changes
/// it deferred and the addresses that are not ours. So one copy of the state
/// is kept (moved, not cloned), and only those few differences are owned
/// here while the change set, which borrows both states, is dropped.
#[derive(Default)]
pub(super) struct KernelAfter {
    routes_absent: Vec<RouteKey>,
    routes_kept: Vec<(RouteKey, RouteSpec)>,
    addresses_absent: Vec<AddressEntry>,
    addresses_kept: Vec<AddressEntry>,
}

impl KernelAfter {
    pub(super) fn new(
        actual: &KernelState,
        desired: &KernelState,
        deferred: &[Change<'_>],
    ) -> Self {
        let mut after = KernelAfter::default();
        for change in deferred {
            match *change {
                Change::AddRoute { key, .. } => after.routes_absent.push(key.clone()),
                Change::ChangeRoute { key, old: spec, .. } | Change::RemoveRoute { key, spec } => {
                    after.routes_kept.push((key.clone(), spec.clone()))
                }
                Change::AddAddress(entry) => after.addresses_absent.push(entry.clone()),
                Change::RemoveAddress(entry) => after.addresses_kept.push(entry.clone()),
                // nft changes are all or nothing: never deferred.
                _ => {}
            }
        }
        // Addresses that are not ours stay as the kernel has them.
        let foreign = actual
            .addresses
            .difference(&desired.addresses)
            .filter(|entry| !desired.ownership.owns(entry));
        after.addresses_kept.extend(foreign.cloned());
        after
    }

    pub(super) fn apply(self, desired: KernelState, state_id: &str) -> KernelState {
        let mut state = desired;
        for key in &self.routes_absent {
            state.routes.remove(key);
        }
        state.routes.extend(self.routes_kept);
        for entry in &self.addresses_absent {
            state.addresses.remove(entry);
        }
        state.addresses.extend(self.addresses_kept);
        state.ownership = Default::default();
        state.state_id = Some(state_id.to_string());
        forget_rule_statements(&mut state);
        state
    }
}

/// One line for all deferred changes (10,000 addresses on a missing device
/// must not be 10,000 log lines at every resync), naming the first few.
pub(super) fn log_deferred(deferred: &[crate::dataplane::DeferredChange]) {
    const NAMED: usize = 3;
    if deferred.is_empty() {
        return;
    }
    let named: Vec<String> = deferred
        .iter()
        .take(NAMED)
        .map(|d| format!("{} ({})", d.change.line(), d.reason))
        .collect();
    let more = deferred.len().saturating_sub(NAMED);
    let more = if more > 0 {
        format!("; and {more} more")
    } else {
        String::new()
    };
    tracing::warn!(
        count = deferred.len(),
        "changes deferred to the next resync: {}{more}",
        named.join("; ")
    );
}

pub(super) fn log_sysctl_problem(name: &str, problem: &str) {
    tracing::warn!(sysctl = %name, "sysctl {name} {problem}: instances may lose traffic or security groups");
}

/// The first few of `objects`, for one log line however many there are.
pub(super) fn name_few(objects: &[String]) -> String {
    const NAMED: usize = 3;
    let mut text = objects[..objects.len().min(NAMED)].join("; ");
    if objects.len() > NAMED {
        text.push_str(&format!("; and {} more", objects.len() - NAMED));
    }
    text
}
