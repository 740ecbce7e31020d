//! Every node's view and state id for a whole model, in one pass, and again
//! after a change for only the nodes the change can reach.
//!
//! Each entity is serialised once into a shared canonical fragment; a view is
//! the concatenation of its fragments, so hashing a view never re-serialises
//! and views that share groups share their member lists.

use rustc_hash::{FxHashMap as HashMap, FxHashSet as HashSet};
use std::io::Write;
use std::sync::Arc;

use crate::addr::sort_numerically;
use crate::canonical::{canonical_instance, route_order, to_canonical_vec, HashingWriter, StateId};
use crate::change::ModelChange;
use crate::types::*;

type Bytes = Arc<[u8]>;

/// Every node's view of one model. Cheap to share behind an `Arc`.
#[derive(Debug, Clone)]
pub struct ModelIndex {
    model: Arc<CloudModel>,
    shared: Arc<SharedParts>,
    views: HashMap<Arc<str>, Arc<ViewEntry>>,
    groups: HashMap<Arc<str>, GroupPart>,
    /// `"group-id":[member IPs]` for every group that has members.
    members: HashMap<Arc<str>, Bytes>,
}

/// The parts every view carries.
#[derive(Debug, PartialEq, Eq)]
struct SharedParts {
    metadata: Option<Bytes>,
    public_ips: Bytes,
    subnets: Bytes,
    schema: i64,
}

#[derive(Debug, Clone)]
struct GroupPart {
    id: Arc<str>,
    fragment: Bytes,
    /// Groups named by this group's `group` rules, sorted, distinct.
    referenced: Vec<Arc<str>>,
}

/// One node's view, as fragments in canonical order, and its id.
#[derive(Debug)]
pub struct ViewEntry {
    state_id: StateId,
    node: Bytes,
    instances: Vec<Bytes>,
    /// The groups the view includes, sorted by id.
    groups: Vec<GroupPart>,
    /// Member fragments, sorted by group id.
    members: Vec<(Arc<str>, Bytes)>,
    routes: Vec<Bytes>,
}

impl ViewEntry {
    pub fn state_id(&self) -> &StateId {
        &self.state_id
    }
}

/// What a model change can reach.
#[derive(Default)]
struct Reach {
    nodes: HashSet<String>,
    groups: HashSet<String>,
    memberships: HashSet<String>,
}

impl ModelIndex {
    /// Computes every node's view and id. The model must be valid.
    pub fn build(model: Arc<CloudModel>) -> Self {
        let shared = Arc::new(SharedParts::of(&model));
        let groups = model
            .security_groups
            .iter()
            .map(GroupPart::of)
            .map(|g| (g.id.clone(), g))
            .collect();
        let members = members_of(&model, |_| true);
        let mut index = ModelIndex {
            model,
            shared,
            views: HashMap::default(),
            groups,
            members,
        };
        index.views = index.rebuild_views(|_| true, &HashMap::default());
        index
    }

    /// The index of `model`, recomputing only the views `model` can change
    /// relative to `self`. Returns the nodes whose state id changed, removed
    /// nodes included.
    pub fn update(&self, model: Arc<CloudModel>) -> (Self, Vec<String>) {
        let shared = Arc::new(SharedParts::of(&model));
        let next = if shared != self.shared {
            Self::build(model)
        } else {
            let reach = self.reach_of(&model);
            let mut next = ModelIndex {
                groups: self.updated_groups(&model, &reach.groups),
                members: self.updated_members(&model, &reach.memberships),
                model,
                shared,
                views: HashMap::default(),
            };
            next.views = next.rebuild_views(|node| reach.nodes.contains(node), &self.views);
            next
        };
        let changed = next.changed_nodes_since(self);
        (next, changed)
    }

    /// The index of `model`, which is `self`'s model with `change` applied
    /// (and validated). The reach comes from the change, not from diffing
    /// the two models, and only the views it reaches are recomputed.
    /// Returns the nodes whose state id changed, removed nodes included.
    pub fn apply(&self, model: Arc<CloudModel>, change: &ModelChange) -> (Self, Vec<String>) {
        if change.touches_shared_parts() {
            // Every view carries these: nothing to spare.
            let next = Self::build(model);
            let changed = next.changed_nodes_since(self);
            return (next, changed);
        }
        let reach = self.reach_of_change(&model, change);
        let mut next = ModelIndex {
            groups: self.updated_groups(&model, &reach.groups),
            members: self.updated_members(&model, &reach.memberships),
            model,
            shared: self.shared.clone(),
            views: HashMap::default(),
        };
        next.views = next.rebuild_views(|node| reach.nodes.contains(node), &self.views);
        let mut changed: Vec<String> = reach
            .nodes
            .iter()
            .filter(|node| self.state_id(node) != next.state_id(node))
            .cloned()
            .collect();
        changed.sort();
        (next, changed)
    }

    /// Views of the nodes `rebuild` selects (and of new nodes) are computed;
    /// the others are taken from `old`.
    fn rebuild_views(
        &self,
        rebuild: impl Fn(&str) -> bool,
        old: &HashMap<Arc<str>, Arc<ViewEntry>>,
    ) -> HashMap<Arc<str>, Arc<ViewEntry>> {
        let wanted = |node: &str| rebuild(node) || !old.contains_key(node);
        let instances = instances_by_node(&self.model, &wanted);
        let routes = RouteParts::of(&self.model);
        self.model
            .nodes
            .iter()
            .map(|node| {
                let entry = if wanted(&node.id) {
                    let positions = instances
                        .get(node.id.as_str())
                        .map(Vec::as_slice)
                        .unwrap_or_default();
                    Arc::new(self.view_entry(node, positions, &routes))
                } else {
                    old[node.id.as_str()].clone()
                };
                (Arc::from(node.id.as_str()), entry)
            })
            .collect()
    }

    fn view_entry(
        &self,
        node: &Node,
        instance_positions: &[usize],
        routes: &RouteParts,
    ) -> ViewEntry {
        let instances: Vec<&Instance> = instance_positions
            .iter()
            .map(|p| &self.model.instances[*p])
            .collect();
        let mut group_ids: Vec<&str> = instances
            .iter()
            .flat_map(|instance| instance.security_groups())
            .map(String::as_str)
            .collect();
        group_ids.sort_unstable();
        group_ids.dedup();
        let groups: Vec<GroupPart> = group_ids
            .iter()
            .filter_map(|id| self.groups.get(*id).cloned())
            .collect();
        let mut referenced: Vec<&Arc<str>> = groups.iter().flat_map(|g| &g.referenced).collect();
        referenced.sort_unstable();
        referenced.dedup();
        let members = referenced
            .into_iter()
            .map(|group| {
                let fragment = self.members.get(group).cloned();
                (
                    group.clone(),
                    fragment.unwrap_or_else(|| members_fragment(group, &[])),
                )
            })
            .collect();
        let mut entry = ViewEntry {
            state_id: StateId::of_canonical_json(b""),
            node: to_canonical_vec(node).into(),
            instances: instances
                .iter()
                .map(|instance| to_canonical_vec(&*canonical_instance(instance)).into())
                .collect(),
            groups,
            members,
            routes: routes.for_node(&node.id),
        };
        let mut hasher = HashingWriter::default();
        write_view(&mut hasher, &entry, &self.shared).expect("hashing cannot fail");
        entry.state_id = hasher.finish();
        entry
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
        let removed = before
            .views
            .keys()
            .filter(|node| !self.views.contains_key(*node));
        changed.extend(removed.map(|node| node.to_string()));
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
        self.views.get(node_id).map(|entry| &**entry)
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

impl GroupPart {
    fn of(group: &SecurityGroup) -> Self {
        let mut referenced: Vec<&str> = group
            .ingress()
            .iter()
            .filter_map(|rule| rule.group.as_deref())
            .collect();
        referenced.sort_unstable();
        referenced.dedup();
        GroupPart {
            id: Arc::from(group.id.as_str()),
            fragment: to_canonical_vec(group).into(),
            referenced: referenced.into_iter().map(Arc::from).collect(),
        }
    }
}

/// Route fragments in canonical order, split by the nodes they are for.
struct RouteParts<'m> {
    ordered: Vec<(&'m Route, Bytes)>,
}

impl<'m> RouteParts<'m> {
    fn of(model: &'m CloudModel) -> Self {
        let mut routes: Vec<&Route> = model.routes.iter().collect();
        routes.sort_by(|a, b| route_order(a, b));
        let ordered = routes
            .into_iter()
            .map(|route| (route, to_canonical_vec(route).into()))
            .collect();
        RouteParts { ordered }
    }

    fn for_node(&self, node_id: &str) -> Vec<Bytes> {
        self.ordered
            .iter()
            .filter(|(route, _)| route.applies_to(node_id))
            .map(|(_, bytes)| bytes.clone())
            .collect()
    }
}

/// Positions of the instances of the nodes `wanted` selects, each node's
/// sorted by instance id.
fn instances_by_node<'m>(
    model: &'m CloudModel,
    wanted: &impl Fn(&str) -> bool,
) -> HashMap<&'m str, Vec<usize>> {
    let mut by_node: HashMap<&str, Vec<usize>> = HashMap::default();
    for (position, instance) in model.instances.iter().enumerate() {
        if wanted(&instance.node) {
            by_node
                .entry(instance.node.as_str())
                .or_default()
                .push(position);
        }
    }
    for positions in by_node.values_mut() {
        positions.sort_unstable_by(|a, b| model.instances[*a].id.cmp(&model.instances[*b].id));
    }
    by_node
}

/// Member fragments of the groups `wanted` selects.
fn members_of(model: &CloudModel, wanted: impl Fn(&str) -> bool) -> HashMap<Arc<str>, Bytes> {
    let mut ips: HashMap<&str, Vec<String>> = HashMap::default();
    for instance in &model.instances {
        for group in instance.security_groups().iter().filter(|g| wanted(g)) {
            ips.entry(group.as_str())
                .or_default()
                .push(instance.private_ip.clone());
        }
    }
    ips.into_iter()
        .map(|(group, mut ips)| {
            sort_numerically(&mut ips);
            (Arc::from(group), members_fragment(group, &ips))
        })
        .collect()
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
    write_joined(out, entry.groups.iter().map(|g| &g.fragment))?;
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

mod reach;
