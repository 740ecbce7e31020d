//! The entity-level change from one model to the next: what a model source
//! produces (the file by diffing two reads, etcd from its watch events) and
//! what the view index and the describe protocol consume, so a change of one
//! entity costs work in proportion to that entity, not to the model.
//!
//! Entities with an `id` (subnets, nodes, instances, security groups) are
//! changed by id: an upsert carries the whole new entity, a removal its id.
//! Metadata and the public IP pool are single values, replaced whole.
//! Routes have no id in the model (docs/model.md): a route is its content,
//! so a changed route is one removed and one added, and a model that lists
//! the same route twice holds it twice (validation decides if that is
//! allowed).

use std::collections::HashMap;
use std::hash::Hash;

use crate::types::*;

/// Changes of one kind of entity that has an `id`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KindChange<T> {
    /// New or changed entities, whole. Upserting an id that is removed in
    /// the same change is not allowed: `removals` are applied first.
    pub upserts: Vec<T>,
    /// Ids of entities that are gone.
    pub removals: Vec<String>,
}

impl<T> Default for KindChange<T> {
    fn default() -> Self {
        KindChange {
            upserts: Vec::new(),
            removals: Vec::new(),
        }
    }
}

impl<T> KindChange<T> {
    pub fn is_empty(&self) -> bool {
        self.upserts.is_empty() && self.removals.is_empty()
    }

    pub fn len(&self) -> usize {
        self.upserts.len() + self.removals.len()
    }
}

/// Routes added and removed, each by content.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RouteChange {
    pub added: Vec<Route>,
    /// Each removes one occurrence of an equal route.
    pub removed: Vec<Route>,
}

impl RouteChange {
    pub fn is_empty(&self) -> bool {
        self.added.is_empty() && self.removed.is_empty()
    }
}

/// Everything that differs between two models, by kind and id. The empty
/// change (`ModelChange::default()`) means "the same model".
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ModelChange {
    /// `Some(new)` when the metadata changed; `Some(None)` when it went.
    pub metadata: Option<Option<Metadata>>,
    /// `Some(pool)` when the public IP pool changed (it is one value).
    pub public_ips: Option<Vec<String>>,
    pub subnets: KindChange<Subnet>,
    pub nodes: KindChange<Node>,
    pub instances: KindChange<Instance>,
    pub security_groups: KindChange<SecurityGroup>,
    pub routes: RouteChange,
}

/// An entity known by its `id` field.
pub trait Identified {
    fn id(&self) -> &str;
}

macro_rules! identified {
    ($($kind:ty),*) => {$(
        impl Identified for $kind {
            fn id(&self) -> &str {
                &self.id
            }
        }
    )*};
}
identified!(Subnet, Node, Instance, SecurityGroup);

impl ModelChange {
    /// What turns `before` into `after`. Both are expected to be valid (ids
    /// unique); with duplicate ids the last entity of an id wins.
    pub fn between(before: &CloudModel, after: &CloudModel) -> Self {
        ModelChange {
            metadata: (before.metadata != after.metadata).then(|| after.metadata.clone()),
            public_ips: (before.public_ips != after.public_ips).then(|| after.public_ips.clone()),
            subnets: diff_by_id(&before.subnets, &after.subnets),
            nodes: diff_by_id(&before.nodes, &after.nodes),
            instances: diff_by_id(&before.instances, &after.instances),
            security_groups: diff_by_id(&before.security_groups, &after.security_groups),
            routes: diff_routes(&before.routes, &after.routes),
        }
    }

    /// Applies the change to `model` in place. Upserts of an existing id
    /// replace the entity where it stands; new entities are appended, so a
    /// model rebuilt from the same changes has the same order everywhere.
    /// Removing an id or route that is not there is not an error: the
    /// change is what the result must look like, not a transaction log.
    pub fn apply_to(&self, model: &mut CloudModel) {
        if let Some(metadata) = &self.metadata {
            model.metadata = metadata.clone();
        }
        if let Some(pool) = &self.public_ips {
            model.public_ips = pool.clone();
        }
        apply_by_id(&mut model.subnets, &self.subnets);
        apply_by_id(&mut model.nodes, &self.nodes);
        apply_by_id(&mut model.instances, &self.instances);
        apply_by_id(&mut model.security_groups, &self.security_groups);
        apply_routes(&mut model.routes, &self.routes);
    }

    pub fn is_empty(&self) -> bool {
        self.metadata.is_none()
            && self.public_ips.is_none()
            && self.subnets.is_empty()
            && self.nodes.is_empty()
            && self.instances.is_empty()
            && self.security_groups.is_empty()
            && self.routes.is_empty()
    }

    /// Whether a part every view carries (metadata, pool, subnets) changed:
    /// then every node's view changes.
    pub fn touches_shared_parts(&self) -> bool {
        self.metadata.is_some() || self.public_ips.is_some() || !self.subnets.is_empty()
    }

    /// Entities upserted or removed (metadata and the pool count one each).
    pub fn len(&self) -> usize {
        usize::from(self.metadata.is_some())
            + usize::from(self.public_ips.is_some())
            + self.subnets.len()
            + self.nodes.len()
            + self.instances.len()
            + self.security_groups.len()
            + self.routes.added.len()
            + self.routes.removed.len()
    }
}

fn diff_by_id<T: Identified + Clone + PartialEq>(before: &[T], after: &[T]) -> KindChange<T> {
    let old: HashMap<&str, &T> = before.iter().map(|e| (e.id(), e)).collect();
    let new: HashMap<&str, &T> = after.iter().map(|e| (e.id(), e)).collect();
    let mut change = KindChange::default();
    // Walk `after` in order (not the map) so the change lists entities in
    // the model's order and is the same for the same two models.
    for entity in after {
        if new.get(entity.id()) != Some(&entity) {
            continue; // an earlier duplicate of a later entity
        }
        if old.get(entity.id()) != Some(&entity) {
            change.upserts.push(entity.clone());
        }
    }
    for entity in before {
        let id = entity.id();
        if !new.contains_key(id) && old.get(id) == Some(&entity) {
            change.removals.push(id.to_owned());
        }
    }
    change
}

fn apply_by_id<T: Identified + Clone>(entities: &mut Vec<T>, change: &KindChange<T>) {
    if change.is_empty() {
        return;
    }
    if !change.removals.is_empty() {
        let gone: std::collections::HashSet<&str> =
            change.removals.iter().map(String::as_str).collect();
        entities.retain(|e| !gone.contains(e.id()));
    }
    if change.upserts.is_empty() {
        return;
    }
    // Where each upsert goes, found with one pass and no allocation per
    // entity (a change is usually a handful of entities in a large model).
    let mut wanted: HashMap<&str, Option<usize>> =
        change.upserts.iter().map(|e| (e.id(), None)).collect();
    for (p, entity) in entities.iter().enumerate() {
        if let Some(slot) = wanted.get_mut(entity.id()) {
            *slot = Some(p);
        }
    }
    let mut appended: HashMap<&str, usize> = HashMap::new();
    for entity in &change.upserts {
        match wanted[entity.id()].or_else(|| appended.get(entity.id()).copied()) {
            Some(p) => entities[p] = entity.clone(),
            None => {
                appended.insert(entity.id(), entities.len());
                entities.push(entity.clone());
            }
        }
    }
}

/// Multiset difference of two route lists, in list order.
fn diff_routes(before: &[Route], after: &[Route]) -> RouteChange {
    let mut unmatched = counts(before);
    let mut change = RouteChange::default();
    for route in after {
        match unmatched.get_mut(route) {
            Some(n) if *n > 0 => *n -= 1,
            _ => change.added.push(route.clone()),
        }
    }
    for route in before.iter().rev() {
        if let Some(n) = unmatched.get_mut(route) {
            if *n > 0 {
                *n -= 1;
                change.removed.push(route.clone());
            }
        }
    }
    change.removed.reverse();
    change
}

fn apply_routes(routes: &mut Vec<Route>, change: &RouteChange) {
    if !change.removed.is_empty() {
        let mut to_remove = counts(&change.removed);
        routes.retain(|route| match to_remove.get_mut(route) {
            Some(n) if *n > 0 => {
                *n -= 1;
                false
            }
            _ => true,
        });
    }
    routes.extend(change.added.iter().cloned());
}

fn counts<T: Eq + Hash>(items: &[T]) -> HashMap<&T, usize> {
    let mut counts = HashMap::new();
    for item in items {
        *counts.entry(item).or_insert(0) += 1;
    }
    counts
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::synthetic::{generate, Shape};

    fn sample() -> CloudModel {
        generate(Shape {
            nodes: 4,
            instances: 20,
            groups: 3,
            seed: 7,
        })
    }

    #[test]
    fn the_same_model_is_the_empty_change() {
        let model = sample();
        let change = ModelChange::between(&model, &model.clone());
        assert!(change.is_empty(), "{change:?}");
        assert_eq!(change.len(), 0);
    }

    #[test]
    fn one_instance_changed_is_one_upsert() {
        let before = sample();
        let mut after = before.clone();
        after.instances[7].mac = "02:00:00:00:99:99".into();
        let change = ModelChange::between(&before, &after);
        assert_eq!(change.len(), 1);
        assert_eq!(change.instances.upserts, vec![after.instances[7].clone()]);
        assert!(!change.touches_shared_parts());
    }

    #[test]
    fn apply_of_the_diff_gives_the_later_model() {
        let before = sample();
        let mut after = before.clone();
        after.instances.remove(3);
        after.instances[0].private_ip = "10.99.0.1".into();
        after.nodes.remove(1);
        after.metadata = None;
        after.public_ips.push("198.51.100.200".into());
        after.routes.push(Route {
            destination: "192.0.2.0/24".into(),
            device: None,
            gateway: Some("10.0.0.1".into()),
            metric: None,
            node: Some(after.nodes[0].id.clone()),
        });
        let change = ModelChange::between(&before, &after);
        let mut applied = before.clone();
        change.apply_to(&mut applied);
        assert_eq!(applied, after);
        // And back again.
        let mut reverted = after.clone();
        ModelChange::between(&after, &before).apply_to(&mut reverted);
        sort_all(&mut reverted);
        let mut expected = before.clone();
        sort_all(&mut expected);
        assert_eq!(reverted, expected);
    }

    #[test]
    fn duplicate_routes_are_counted() {
        let route = Route {
            destination: "0.0.0.0/0".into(),
            device: None,
            gateway: Some("10.0.0.1".into()),
            metric: None,
            node: None,
        };
        let before = vec![route.clone(), route.clone()];
        let after = vec![route.clone()];
        let change = diff_routes(&before, &after);
        assert_eq!(change.removed, vec![route.clone()]);
        assert!(change.added.is_empty());
        let mut applied = before.clone();
        apply_routes(&mut applied, &change);
        assert_eq!(applied, after);
    }

    #[test]
    fn removing_what_is_not_there_is_harmless() {
        let mut model = sample();
        let expected = model.clone();
        let change = ModelChange {
            nodes: KindChange {
                upserts: vec![],
                removals: vec!["nc-absent".into()],
            },
            ..ModelChange::default()
        };
        change.apply_to(&mut model);
        assert_eq!(model, expected);
    }

    fn sort_all(model: &mut CloudModel) {
        model.instances.sort_by(|a, b| a.id.cmp(&b.id));
        model.nodes.sort_by(|a, b| a.id.cmp(&b.id));
        model.subnets.sort_by(|a, b| a.id.cmp(&b.id));
        model.security_groups.sort_by(|a, b| a.id.cmp(&b.id));
        model
            .routes
            .sort_by_key(|r| serde_json::to_string(r).unwrap());
    }
}
