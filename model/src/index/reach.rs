//! Which views a model change can reach, so an update recomputes only those.

use rustc_hash::{FxHashMap as HashMap, FxHashSet as HashSet};
use std::sync::Arc;

use super::{members_of, GroupPart, ModelIndex, Reach};
use crate::change::{KindChange, ModelChange};
use crate::types::*;

impl ModelIndex {
    /// Nodes that hold a changed node entity, instance, group or route, and
    /// nodes that carry the members of a group whose membership changed.
    /// Shared parts (pool, subnets, metadata) are compared by the caller.
    pub(super) fn reach_of(&self, model: &CloudModel) -> Reach {
        let mut reach = Reach::default();
        self.reach_of_nodes(model, &mut reach);
        self.reach_of_instances(model, &mut reach);
        self.reach_of_groups(model, &mut reach);
        self.reach_of_routes(model, &mut reach);
        self.reach_through_groups(&mut reach);
        reach
    }

    /// The same reach as [`Self::reach_of`], read off a change: removed and
    /// upserted entities, each with the version `self` holds. Nodes new to
    /// the model are reached too (their views do not exist yet).
    pub(super) fn reach_of_change(&self, model: &CloudModel, change: &ModelChange) -> Reach {
        let mut reach = Reach::default();
        let nodes = &change.nodes;
        reach
            .nodes
            .extend(nodes.upserts.iter().map(|n| n.id.clone()));
        reach.nodes.extend(nodes.removals.iter().cloned());
        self.reach_of_changed_instances(&change.instances, &mut reach);
        let groups = &change.security_groups;
        reach
            .groups
            .extend(groups.upserts.iter().map(|g| g.id.clone()));
        reach.groups.extend(groups.removals.iter().cloned());
        let routes = change.routes.added.iter().chain(&change.routes.removed);
        for route in routes {
            match &route.node {
                Some(node) => {
                    reach.nodes.insert(node.clone());
                }
                None => reach.nodes.extend(model.nodes.iter().map(|n| n.id.clone())),
            }
        }
        self.reach_through_groups(&mut reach);
        reach
    }

    /// Upserted and removed instances against their old versions, found in
    /// one pass over the old model's instances (no allocation per instance).
    fn reach_of_changed_instances(&self, change: &KindChange<Instance>, reach: &mut Reach) {
        if change.is_empty() {
            return;
        }
        let mut wanted: HashMap<&str, Option<&Instance>> = HashMap::default();
        wanted.extend(change.upserts.iter().map(|i| (i.id.as_str(), Some(i))));
        wanted.extend(change.removals.iter().map(|id| (id.as_str(), None)));
        let mut seen: HashSet<&str> = HashSet::default();
        for old in &self.model.instances {
            if let Some(new) = wanted.get(old.id.as_str()) {
                seen.insert(old.id.as_str());
                if *new != Some(old) {
                    instance_changed(Some(old), *new, reach);
                }
            }
        }
        for new in &change.upserts {
            if !seen.contains(new.id.as_str()) {
                instance_changed(None, Some(new), reach);
            }
        }
    }

    /// Adds the nodes that hold a reached group or carry the members of a
    /// group whose membership changed.
    fn reach_through_groups(&self, reach: &mut Reach) {
        if reach.groups.is_empty() && reach.memberships.is_empty() {
            return;
        }
        for (node, entry) in &self.views {
            let holds_group = entry.groups.iter().any(|g| reach.groups.contains(&*g.id));
            let carries_members = entry
                .members
                .iter()
                .any(|(g, _)| reach.memberships.contains(&**g));
            if holds_group || carries_members {
                reach.nodes.insert(node.to_string());
            }
        }
    }

    fn reach_of_nodes(&self, model: &CloudModel, reach: &mut Reach) {
        let old: HashMap<&str, &Node> = self
            .model
            .nodes
            .iter()
            .map(|n| (n.id.as_str(), n))
            .collect();
        for node in &model.nodes {
            if old.get(node.id.as_str()) != Some(&node) {
                reach.nodes.insert(node.id.clone());
            }
        }
    }

    fn reach_of_instances(&self, model: &CloudModel, reach: &mut Reach) {
        // Models are usually rewritten in the same order, so compare in
        // place first and look up by id only what moved.
        let old = &self.model.instances;
        let mut moved_old: HashMap<&str, &Instance> = HashMap::default();
        let mut moved_new: Vec<&Instance> = Vec::new();
        for position in 0..old.len().max(model.instances.len()) {
            match (old.get(position), model.instances.get(position)) {
                (Some(a), Some(b)) if a.id == b.id => {
                    if a != b {
                        instance_changed(Some(a), Some(b), reach);
                    }
                }
                (a, b) => {
                    moved_old.extend(a.map(|a| (a.id.as_str(), a)));
                    moved_new.extend(b);
                }
            }
        }
        for new in moved_new {
            match moved_old.remove(new.id.as_str()) {
                Some(old) if old == new => {}
                old => instance_changed(old, Some(new), reach),
            }
        }
        for old in moved_old.into_values() {
            instance_changed(Some(old), None, reach);
        }
    }

    fn reach_of_groups(&self, model: &CloudModel, reach: &mut Reach) {
        let old: HashMap<&str, &SecurityGroup> = self
            .model
            .security_groups
            .iter()
            .map(|g| (g.id.as_str(), g))
            .collect();
        let new: HashMap<&str, &SecurityGroup> = model
            .security_groups
            .iter()
            .map(|g| (g.id.as_str(), g))
            .collect();
        for (id, group) in &new {
            if old.get(id) != Some(group) {
                reach.groups.insert(id.to_string());
            }
        }
        let removed = old.keys().filter(|id| !new.contains_key(*id));
        reach.groups.extend(removed.map(|id| id.to_string()));
    }

    fn reach_of_routes(&self, model: &CloudModel, reach: &mut Reach) {
        let old: HashSet<&Route> = self.model.routes.iter().collect();
        let new: HashSet<&Route> = model.routes.iter().collect();
        for route in old.symmetric_difference(&new) {
            match &route.node {
                Some(node) => {
                    reach.nodes.insert(node.clone());
                }
                None => reach.nodes.extend(model.nodes.iter().map(|n| n.id.clone())),
            }
        }
    }

    pub(super) fn updated_groups(
        &self,
        model: &CloudModel,
        changed: &HashSet<String>,
    ) -> HashMap<Arc<str>, GroupPart> {
        let mut groups = self.groups.clone();
        groups.retain(|id, _| !changed.contains(&**id));
        for group in model
            .security_groups
            .iter()
            .filter(|g| changed.contains(&g.id))
        {
            let part = GroupPart::of(group);
            groups.insert(part.id.clone(), part);
        }
        groups
    }

    pub(super) fn updated_members(
        &self,
        model: &CloudModel,
        changed: &HashSet<String>,
    ) -> HashMap<Arc<str>, super::Bytes> {
        let mut members = self.members.clone();
        if changed.is_empty() {
            return members;
        }
        members.retain(|id, _| !changed.contains(&**id));
        members.extend(members_of(model, |group| changed.contains(group)));
        members
    }
}

fn instance_changed(old: Option<&Instance>, new: Option<&Instance>, reach: &mut Reach) {
    for instance in old.iter().chain(new.iter()) {
        reach.nodes.insert(instance.node.clone());
    }
    let same_membership = match (old, new) {
        (Some(old), Some(new)) => {
            old.private_ip == new.private_ip && old.security_groups() == new.security_groups()
        }
        _ => false,
    };
    if !same_membership {
        for instance in old.iter().chain(new.iter()) {
            reach
                .memberships
                .extend(instance.security_groups().iter().cloned());
        }
    }
}
