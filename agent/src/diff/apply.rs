//! Bringing a cached kernel state up to date with the changes made to it.

use super::{Change, ChangeSet};
use crate::state::KernelState;

impl ChangeSet<'_> {
    /// Bring a cached actual state up to date after these changes were made
    /// (all but `skipped`, which the kernel did not take).
    pub fn apply_to(&self, state: &mut KernelState, skipped: &[Change]) {
        for change in self.changes.iter().filter(|c| !skipped.contains(c)) {
            apply_change(state, change);
        }
    }
}

fn apply_change(state: &mut KernelState, change: &Change) {
    use Change::*;
    // By value (a change is a few references), so fields are `&T`.
    match *change {
        AddRoute { key, spec } | ChangeRoute { key, new: spec, .. } => {
            state.routes.insert(key.clone(), spec.clone());
        }
        RemoveRoute { key, .. } => {
            state.routes.remove(key);
        }
        AddAddress(entry) => {
            state.addresses.insert(entry.clone());
        }
        RemoveAddress(entry) => {
            state.addresses.remove(entry);
        }
        AddTable(table) => {
            state.tables.entry(table.clone()).or_default();
        }
        RemoveTable(table) => {
            state.tables.remove(table);
        }
        AddChain { table, name, chain }
        | ChangeChain {
            table, name, chain, ..
        } => {
            let table = state.tables.entry(table.clone()).or_default();
            table.chains.insert(name.clone(), chain.clone());
        }
        RemoveChain { table, name, .. } => {
            if let Some(table) = state.tables.get_mut(table) {
                table.chains.remove(name);
            }
        }
        AddSet { table, name, set } => {
            let table = state.tables.entry(table.clone()).or_default();
            let mut set = set.clone();
            set.elements.clear();
            table.sets.insert(name.clone(), set);
        }
        RemoveSet { table, name } => {
            if let Some(table) = state.tables.get_mut(table) {
                table.sets.remove(name);
            }
        }
        AddElement {
            table,
            set,
            key,
            value,
        }
        | ChangeElement {
            table,
            set,
            key,
            new: value,
            ..
        } => {
            if let Some(set) = state
                .tables
                .get_mut(table)
                .and_then(|t| t.sets.get_mut(set))
            {
                set.elements.insert(key.clone(), value.clone());
            }
        }
        RemoveElement {
            table, set, key, ..
        } => {
            if let Some(set) = state
                .tables
                .get_mut(table)
                .and_then(|t| t.sets.get_mut(set))
            {
                set.elements.remove(key);
            }
        }
    }
}
