//! Every node's view and state id for a whole model, in one pass, and again
//! after a change for only the nodes the change can reach.
//!
//! Each entity is serialised once into a shared canonical fragment; a view is
//! the concatenation of its fragments, so hashing a view never re-serialises
//! and views that share groups share their member lists.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::io::Write;
use std::sync::Arc;

use crate::addr::sort_numerically;
use crate::canonical::{canonical_instance, route_order, to_canonical_vec, HashingWriter, StateId};
use crate::types::*;
use crate::view::referenced_groups;

type Bytes = Arc<[u8]>;

/// Every node's view of one model. Cheap to share behind an `Arc`.
#[derive(Debug, Clone)]
pub struct ModelIndex {
    model: Arc<CloudModel>,
    shared: Arc<SharedParts>,
    views: HashMap<Arc<str>, ViewEntry>,
    /// Parallel to the model's `instances`, for reuse by [`ModelIndex::update`].
    instance_fragments: Vec<Bytes>,
}

/// The parts every view carries.
#[derive(Debug, PartialEq, Eq)]
struct SharedParts {
    metadata: Option<Bytes>,
    public_ips: Bytes,
    subnets: Bytes,
    schema: i64,
}

/// One node's view, as fragments in canonical order, and its id.
#[derive(Debug, Clone)]
pub struct ViewEntry {
    state_id: StateId,
    node: Bytes,
    instances: Vec<Bytes>,
    /// Ids of the groups the view includes, sorted.
    groups: Vec<Arc<str>>,
    group_fragments: Vec<Bytes>,
    /// `"group-id":[members]`, sorted by group id.
    members: Vec<(Arc<str>, Bytes)>,
    routes: Vec<Bytes>,
}

impl ViewEntry {
    pub fn state_id(&self) -> &StateId {
        &self.state_id
    }
}

/// The model's entities as canonical fragments, keyed for lookups.
struct Fragments<'m> {
    model: &'m CloudModel,
    /// Parallel to the model's `instances`.
    instance_fragments: Vec<Bytes>,
    /// Positions in the model's `instances`, sorted by instance id.
    instances_by_node: HashMap<&'m str, Vec<usize>>,
    groups: HashMap<&'m str, (Bytes, &'m SecurityGroup)>,
    members: HashMap<&'m str, Bytes>,
    routes: Vec<(&'m Route, Bytes)>,
}

/// Reuses the fragment of an instance that did not change between models:
/// instances are most of a model, so this is most of the serialising.
#[derive(Default)]
struct FragmentCache<'o> {
    instances: HashMap<&'o str, (&'o Instance, &'o Bytes)>,
}

impl ModelIndex {
    /// Computes every node's view and id. The model must be valid.
    pub fn build(model: Arc<CloudModel>) -> Self {
        let shared = Arc::new(SharedParts::of(&model));
        let fragments = Fragments::of(&model, &FragmentCache::default());
        let views = model
            .nodes
            .iter()
            .map(|node| (Arc::from(node.id.as_str()), fragments.view(node, &shared)))
            .collect();
        let instance_fragments = fragments.instance_fragments;
        ModelIndex {
            model,
            shared,
            views,
            instance_fragments,
        }
    }

    /// The index of `model`, recomputing only the views `model` can change
    /// relative to `self`. Returns the nodes whose state id changed, the
    /// removed nodes included.
    pub fn update(&self, model: Arc<CloudModel>) -> (Self, Vec<String>) {
        let shared = Arc::new(SharedParts::of(&model));
        if shared != self.shared {
            let next = Self::build(model);
            let changed = next.changed_nodes_since(self);
            return (next, changed);
        }
        let cache = FragmentCache::of(self);
        let fragments = Fragments::of(&model, &cache);
        let touched = self.touched_nodes(&model);
        let views = model
            .nodes
            .iter()
            .map(|node| {
                let entry = match self.views.get(node.id.as_str()) {
                    Some(old) if !touched.contains(node.id.as_str()) => old.clone(),
                    _ => fragments.view(node, &shared),
                };
                (Arc::from(node.id.as_str()), entry)
            })
            .collect();
        let instance_fragments = fragments.instance_fragments;
        let next = ModelIndex {
            model,
            shared,
            views,
            instance_fragments,
        };
        let changed = next.changed_nodes_since(self);
        (next, changed)
    }

    fn changed_nodes_since(&self, before: &ModelIndex) -> Vec<String> {
        let mut changed: Vec<String> = self
            .views
            .iter()
            .filter(|(node, entry)| {
                before.views.get(*node).map(|old| &old.state_id) != Some(&entry.state_id)
            })
            .map(|(node, _)| node.to_string())
            .collect();
        changed.extend(
            before
                .views
                .keys()
                .filter(|node| !self.views.contains_key(*node))
                .map(|node| node.to_string()),
        );
        changed.sort();
        changed
    }

    pub fn model(&self) -> &Arc<CloudModel> {
        &self.model
    }

    pub fn state_id(&self, node_id: &str) -> Option<&StateId> {
        self.views.get(node_id).map(|entry| &entry.state_id)
    }

    pub fn entry(&self, node_id: &str) -> Option<&ViewEntry> {
        self.views.get(node_id)
    }

    pub fn node_ids(&self) -> impl Iterator<Item = &str> {
        self.views.keys().map(|node| &**node)
    }

    pub fn len(&self) -> usize {
        self.views.len()
    }

    pub fn is_empty(&self) -> bool {
        self.views.is_empty()
    }

    /// The canonical JSON of `node_id`'s view: the bytes its id hashes.
    pub fn view_json(&self, node_id: &str) -> Option<Vec<u8>> {
        let entry = self.views.get(node_id)?;
        let mut out = Vec::with_capacity(4096);
        write_view(&mut out, entry, &self.shared).expect("writing to a Vec cannot fail");
        Some(out)
    }
}

impl SharedParts {
    fn of(model: &CloudModel) -> Self {
        let mut public_ips = model.public_ips.clone();
        sort_numerically(&mut public_ips);
        let mut subnets: Vec<&Subnet> = model.subnets.iter().collect();
        subnets.sort_by(|a, b| a.id.cmp(&b.id));
        SharedParts {
            metadata: model.metadata.as_ref().map(|m| to_canonical_vec(m).into()),
            public_ips: to_canonical_vec(&public_ips).into(),
            subnets: to_canonical_vec(&subnets).into(),
            schema: model.schema,
        }
    }
}

impl<'o> FragmentCache<'o> {
    fn of(index: &'o ModelIndex) -> Self {
        let instances = index
            .model
            .instances
            .iter()
            .zip(index.instance_fragments.iter())
            .map(|(instance, bytes)| (instance.id.as_str(), (instance, bytes)))
            .collect();
        FragmentCache { instances }
    }

    fn instance_fragment(&self, instance: &Instance) -> Bytes {
        match self.instances.get(instance.id.as_str()) {
            Some((cached, bytes)) if *cached == instance => Bytes::clone(bytes),
            _ => to_canonical_vec(&*canonical_instance(instance)).into(),
        }
    }
}

impl<'m> Fragments<'m> {
    fn of(model: &'m CloudModel, cache: &FragmentCache) -> Self {
        let mut instances_by_node: HashMap<&str, Vec<usize>> = HashMap::new();
        let mut member_ips: HashMap<&str, Vec<String>> = HashMap::new();
        let mut instance_fragments = Vec::with_capacity(model.instances.len());
        for (position, instance) in model.instances.iter().enumerate() {
            instance_fragments.push(cache.instance_fragment(instance));
            instances_by_node
                .entry(instance.node.as_str())
                .or_default()
                .push(position);
            for group in instance.security_groups() {
                member_ips
                    .entry(group.as_str())
                    .or_default()
                    .push(instance.private_ip.clone());
            }
        }
        for positions in instances_by_node.values_mut() {
            positions.sort_unstable_by(|a, b| model.instances[*a].id.cmp(&model.instances[*b].id));
        }
        let members = member_ips
            .into_iter()
            .map(|(group, mut ips)| {
                sort_numerically(&mut ips);
                (group, members_fragment(group, &ips))
            })
            .collect();
        let groups = model
            .security_groups
            .iter()
            .map(|group| (group.id.as_str(), (to_canonical_vec(group).into(), group)))
            .collect();
        let mut routes: Vec<&Route> = model.routes.iter().collect();
        routes.sort_by(|a, b| route_order(a, b));
        let routes = routes
            .into_iter()
            .map(|route| (route, to_canonical_vec(route).into()))
            .collect();
        Fragments {
            model,
            instance_fragments,
            instances_by_node,
            groups,
            members,
            routes,
        }
    }

    fn view(&self, node: &Node, shared: &SharedParts) -> ViewEntry {
        let positions = self
            .instances_by_node
            .get(node.id.as_str())
            .map(Vec::as_slice)
            .unwrap_or_default();
        let group_ids: BTreeSet<&str> = positions
            .iter()
            .flat_map(|position| self.model.instances[*position].security_groups())
            .map(String::as_str)
            .collect();
        let included: Vec<(&str, &(Bytes, &SecurityGroup))> = group_ids
            .iter()
            .filter_map(|id| self.groups.get(id).map(|group| (*id, group)))
            .collect();
        let members = referenced_groups(included.iter().map(|(_, (_, group))| *group))
            .into_iter()
            .map(|group| {
                let fragment = self.members.get(group).cloned();
                let fragment = fragment.unwrap_or_else(|| members_fragment(group, &[]));
                (Arc::from(group), fragment)
            })
            .collect();
        let mut entry = ViewEntry {
            state_id: StateId::of_canonical_json(b""),
            node: to_canonical_vec(node).into(),
            instances: positions
                .iter()
                .map(|position| self.instance_fragments[*position].clone())
                .collect(),
            groups: included.iter().map(|(id, _)| Arc::from(*id)).collect(),
            group_fragments: included
                .iter()
                .map(|(_, (bytes, _))| bytes.clone())
                .collect(),
            members,
            routes: self
                .routes
                .iter()
                .filter(|(route, _)| route.applies_to(&node.id))
                .map(|(_, bytes)| bytes.clone())
                .collect(),
        };
        let mut hasher = HashingWriter::default();
        write_view(&mut hasher, &entry, shared).expect("hashing cannot fail");
        entry.state_id = hasher.finish();
        entry
    }
}

fn members_fragment(group: &str, ips: &[String]) -> Bytes {
    let mut out = to_canonical_vec(&group);
    out.push(b':');
    serde_json::to_writer(&mut out, ips).expect("writing to a Vec cannot fail");
    out.into()
}

/// Writes a view's canonical JSON from its fragments. Top-level keys in
/// byte order: group_members, instances, metadata, node, public_ips,
/// routes, schema, security_groups, subnets.
fn write_view(
    out: &mut impl Write,
    entry: &ViewEntry,
    shared: &SharedParts,
) -> std::io::Result<()> {
    out.write_all(b"{\"group_members\":{")?;
    write_joined(out, entry.members.iter().map(|(_, bytes)| bytes))?;
    out.write_all(b"},\"instances\":[")?;
    write_joined(out, &entry.instances)?;
    out.write_all(b"]")?;
    if let Some(metadata) = &shared.metadata {
        out.write_all(b",\"metadata\":")?;
        out.write_all(metadata)?;
    }
    out.write_all(b",\"node\":")?;
    out.write_all(&entry.node)?;
    out.write_all(b",\"public_ips\":")?;
    out.write_all(&shared.public_ips)?;
    out.write_all(b",\"routes\":[")?;
    write_joined(out, &entry.routes)?;
    write!(out, "],\"schema\":{},\"security_groups\":[", shared.schema)?;
    write_joined(out, &entry.group_fragments)?;
    out.write_all(b"],\"subnets\":")?;
    out.write_all(&shared.subnets)?;
    out.write_all(b"}")
}

fn write_joined<'b>(
    out: &mut impl Write,
    parts: impl IntoIterator<Item = &'b Bytes>,
) -> std::io::Result<()> {
    for (position, part) in parts.into_iter().enumerate() {
        if position > 0 {
            out.write_all(b",")?;
        }
        out.write_all(part)?;
    }
    Ok(())
}

impl ModelIndex {
    /// Nodes whose view `model` may change: those holding a changed
    /// instance, group, node or route, and those carrying the members of a
    /// group whose membership changed. Shared parts are compared by the
    /// caller.
    fn touched_nodes(&self, model: &CloudModel) -> HashSet<String> {
        let mut touched = HashSet::new();
        let mut groups_touched: HashSet<&str> = HashSet::new();
        let mut membership_touched: HashSet<&str> = HashSet::new();

        let old_nodes: HashMap<&str, &Node> = self
            .model
            .nodes
            .iter()
            .map(|n| (n.id.as_str(), n))
            .collect();
        for node in &model.nodes {
            if old_nodes.get(node.id.as_str()) != Some(&node) {
                touched.insert(node.id.clone());
            }
        }

        let old_instances: HashMap<&str, &Instance> = self
            .model
            .instances
            .iter()
            .map(|i| (i.id.as_str(), i))
            .collect();
        let mut seen = HashSet::with_capacity(model.instances.len());
        for instance in &model.instances {
            seen.insert(instance.id.as_str());
            let old = old_instances.get(instance.id.as_str()).copied();
            if old == Some(instance) {
                continue;
            }
            instance_changed(old, Some(instance), &mut touched, &mut membership_touched);
        }
        for (id, old) in &old_instances {
            if !seen.contains(id) {
                instance_changed(Some(old), None, &mut touched, &mut membership_touched);
            }
        }

        let old_groups: HashMap<&str, &SecurityGroup> = self
            .model
            .security_groups
            .iter()
            .map(|g| (g.id.as_str(), g))
            .collect();
        let new_groups: HashMap<&str, &SecurityGroup> = model
            .security_groups
            .iter()
            .map(|g| (g.id.as_str(), g))
            .collect();
        for (id, group) in &new_groups {
            if old_groups.get(id) != Some(group) {
                groups_touched.insert(id);
            }
        }
        groups_touched.extend(old_groups.keys().filter(|id| !new_groups.contains_key(*id)));

        self.routes_touched(model, &mut touched);
        for (node, entry) in &self.views {
            let holds_group = entry.groups.iter().any(|g| groups_touched.contains(&**g));
            let carries_members = entry
                .members
                .iter()
                .any(|(g, _)| membership_touched.contains(&**g));
            if holds_group || carries_members {
                touched.insert(node.to_string());
            }
        }
        touched
    }

    fn routes_touched(&self, model: &CloudModel, touched: &mut HashSet<String>) {
        let old: HashSet<&Route> = self.model.routes.iter().collect();
        let new: HashSet<&Route> = model.routes.iter().collect();
        for route in old.symmetric_difference(&new) {
            match &route.node {
                Some(node) => {
                    touched.insert(node.clone());
                }
                None => touched.extend(model.nodes.iter().map(|n| n.id.clone())),
            }
        }
    }
}

fn instance_changed<'a>(
    old: Option<&'a Instance>,
    new: Option<&'a Instance>,
    touched: &mut HashSet<String>,
    membership_touched: &mut HashSet<&'a str>,
) {
    for instance in old.iter().chain(new.iter()) {
        touched.insert(instance.node.clone());
    }
    let same_membership = match (old, new) {
        (Some(old), Some(new)) => {
            old.private_ip == new.private_ip && old.security_groups() == new.security_groups()
        }
        _ => false,
    };
    if !same_membership {
        for instance in old.iter().chain(new.iter()) {
            membership_touched.extend(instance.security_groups().iter().map(String::as_str));
        }
    }
}
