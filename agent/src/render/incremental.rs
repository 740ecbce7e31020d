//! The incremental pass: render and diff only the entities that changed.
//!
//! Launching or terminating an instance changes a view in two places: its
//! entry in `instances` and its address in `group_members`. For such a view
//! the full render and diff cost O(instances) (30 ms at 10,000, 80 ms of
//! diff alone at 50,000) to find a dozen changes. Instead, as Calico Felix
//! tracks deltas per entity, the changed instances are rendered twice, as
//! they were and as they are, each time with the unchanged global parts of
//! the view (node, subnets, public pool, groups), and the changes between
//! the two small fragments are what the kernel needs.
//!
//! That is exact because an instance's objects depend only on itself and on
//! those global parts, with three exceptions, each checked here:
//! - objects instances share (a group's `sg_<g>` chain and member sets, a
//!   subnet's gateway address) exist while any instance uses them: counted
//!   in `Usage`, and a pass that would add the first user or remove the
//!   last takes the full path;
//! - duplicates (id, private or public IP, interface, MAC) are left out by
//!   the full render: every object the pass adds must be absent from the
//!   cached state, and every object it removes or changes present there as
//!   rendered, or the full path decides;
//! - instances left out or failed closed interact with the instances that
//!   own their addresses: a view with any takes the full path.
//!
//! Anything else that differs (routes, groups, subnets, node, metadata)
//! takes the full path too. The full path is always right; this one is an
//! optimisation that must give the same kernel state, and a randomised
//! test holds it to that.

use std::cmp::Ordering;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;

use edgenet_model::{Instance, NodeView};

use super::names::{is_group_set, is_instance_chain, is_sg_chain};
use super::{group_member_sets, group_set_name, render, RenderSettings, Usage};
use crate::diff::{diff, Change, ChangeSet};
use crate::snapshot::Snapshot;
use crate::state::{
    AddressEntry, AddressOwnership, Family, IpFamily, KernelState, NftChain, NftSet, TableId,
};

/// What the last applied pass leaves for the next incremental one: the
/// snapshot the kernel holds and the usage counts of its render.
#[derive(Debug, Clone)]
pub struct Baseline {
    pub snapshot: Arc<Snapshot>,
    pub usage: Usage,
}

/// A planned incremental pass: the fragments before and after, which the
/// change set borrows from, and how the usage counts move.
#[derive(Debug)]
pub struct Fragments {
    before: KernelState,
    after: KernelState,
    usage: UsageDelta,
}

/// How an incremental pass moves the baseline's usage counts; applied to
/// the baseline only once the kernel took the changes.
#[derive(Debug, Default)]
struct UsageDelta {
    groups: HashMap<String, isize>,
    gateways: HashMap<AddressEntry, isize>,
    macs_removed: Vec<u64>,
    macs_added: Vec<u64>,
}

impl Baseline {
    /// `Some` only when the render left out no instance (see the module doc).
    pub fn after_full_render(snapshot: Arc<Snapshot>, usage: Usage) -> Option<Baseline> {
        let clean = usage.instances_left_out == 0 && snapshot.removed_instances.is_empty();
        clean.then_some(Baseline { snapshot, usage })
    }

    /// The baseline once `fragments` were applied for `snapshot`.
    pub fn advance(mut self, snapshot: Arc<Snapshot>, fragments: Fragments) -> Baseline {
        let delta = fragments.usage;
        apply_counts(&mut self.usage.groups, delta.groups);
        apply_counts(&mut self.usage.gateways, delta.gateways);
        for mac in delta.macs_removed {
            self.usage.macs.remove(&mac);
        }
        self.usage.macs.extend(delta.macs_added);
        Baseline {
            snapshot,
            usage: self.usage,
        }
    }
}

fn apply_counts<K: std::hash::Hash + Eq>(counts: &mut HashMap<K, usize>, delta: HashMap<K, isize>) {
    for (key, by) in delta {
        let count = counts.entry(key).or_default();
        *count = count.saturating_add_signed(by);
    }
    counts.retain(|_, count| *count > 0);
}

/// Why a pass renders the whole view instead (logged at debug).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InFull {
    NoView,
    InstancesLeftOut,
    GlobalPartsChanged,
    InstancesNotInIdOrder,
    SharedObjectGainsOrLosesUsers,
    GroupMemberNotAnAddress,
    DoesNotFitCachedState,
}

impl std::fmt::Display for InFull {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            InFull::NoView => "no usable view",
            InFull::InstancesLeftOut => "an instance is left out as invalid or duplicate",
            InFull::GlobalPartsChanged => {
                "more than instances and group members changed (routes, groups, subnets, node or metadata)"
            }
            InFull::InstancesNotInIdOrder => "the view's instances are not in id order",
            InFull::SharedObjectGainsOrLosesUsers => {
                "a security group or gateway gains its first instance or loses its last"
            }
            InFull::GroupMemberNotAnAddress => "a changed group member is not an IP address",
            InFull::DoesNotFitCachedState => "a change does not fit the cached kernel state",
        })
    }
}

/// Plans the pass from `baseline` to `next`, or says why the full render
/// and diff must decide (see the module doc).
pub fn plan(
    baseline: &Baseline,
    next: &Snapshot,
    settings: &RenderSettings,
    actual: &KernelState,
) -> Result<Fragments, InFull> {
    let (Some(before), Some(after)) = (baseline.snapshot.view.as_deref(), next.view.as_deref())
    else {
        return Err(InFull::NoView);
    };
    if !next.removed_instances.is_empty() {
        return Err(InFull::InstancesLeftOut);
    }
    if !global_parts_equal(before, after) {
        return Err(InFull::GlobalPartsChanged);
    }
    let (gone, came) = changed_instances(&before.instances, &after.instances)
        .ok_or(InFull::InstancesNotInIdOrder)?;
    let groups = changed_groups(&before.group_members, &after.group_members);
    let rendered_before = render(&sub_view(before, gone, &groups), settings);
    let rendered_after = render(&sub_view(after, came, &groups), settings);
    let left_out_alike =
        instance_lines(&rendered_before.left_out).eq(instance_lines(&rendered_after.left_out));
    if !left_out_alike
        || rendered_before.usage.instances_left_out > 0
        || rendered_after.usage.instances_left_out > 0
    {
        return Err(InFull::InstancesLeftOut);
    }
    let usage = usage_delta(
        &baseline.usage,
        &rendered_before.usage,
        &rendered_after.usage,
    )
    .ok_or(InFull::SharedObjectGainsOrLosesUsers)?;
    let mut fragments = Fragments {
        before: rendered_before.desired,
        after: rendered_after.desired,
        usage,
    };
    for group in &groups {
        fragments.set_members(actual, group, before, after)?;
    }
    Ok(fragments)
}

/// Everything but the instances and the group members.
fn global_parts_equal(a: &NodeView, b: &NodeView) -> bool {
    a.schema == b.schema
        && a.node == b.node
        && a.public_ips == b.public_ips
        && a.subnets == b.subnets
        && a.security_groups == b.security_groups
        && a.metadata == b.metadata
        && a.routes == b.routes
}

/// The instances only in `before` or changed (as they were) and only in
/// `after` or changed (as they are). Views list instances by id, in order;
/// `None` when either does not, or repeats an id.
fn changed_instances<'v>(
    before: &'v [Instance],
    after: &'v [Instance],
) -> Option<(Vec<&'v Instance>, Vec<&'v Instance>)> {
    let ascending = |list: &[Instance]| list.windows(2).all(|w| w[0].id < w[1].id);
    if !ascending(before) || !ascending(after) {
        return None;
    }
    let (mut gone, mut came) = (Vec::new(), Vec::new());
    let (mut old, mut new) = (before.iter().peekable(), after.iter().peekable());
    loop {
        let order = match (old.peek(), new.peek()) {
            (None, None) => return Some((gone, came)),
            (Some(_), None) => Ordering::Less,
            (None, Some(_)) => Ordering::Greater,
            (Some(o), Some(n)) => o.id.cmp(&n.id),
        };
        match order {
            Ordering::Less => gone.extend(old.next()),
            Ordering::Greater => came.extend(new.next()),
            Ordering::Equal => {
                let (o, n) = (old.next()?, new.next()?);
                if o != n {
                    gone.push(o);
                    came.push(n);
                }
            }
        }
    }
}

/// Groups whose member list differs, including groups that appeared or went.
fn changed_groups(
    before: &BTreeMap<String, Vec<String>>,
    after: &BTreeMap<String, Vec<String>>,
) -> Vec<String> {
    let mut changed: Vec<String> = before
        .iter()
        .filter(|(group, members)| after.get(*group) != Some(*members))
        .map(|(group, _)| group.clone())
        .collect();
    changed.extend(
        after
            .keys()
            .filter(|group| !before.contains_key(*group))
            .cloned(),
    );
    changed
}

/// `view` with only `instances` and the members of `groups`: what render
/// needs to render those instances exactly as the full view would.
fn sub_view(view: &NodeView, instances: Vec<&Instance>, groups: &[String]) -> NodeView {
    // Of the groups only those the instances name: render looks up no
    // other (a rule's group reference reads `group_members`), and cloning
    // a thousand groups' rules would cost more than the rest of the pass.
    let named: HashSet<&String> = instances.iter().flat_map(|i| i.security_groups()).collect();
    NodeView {
        group_members: groups
            .iter()
            .filter_map(|g| Some((g.clone(), view.group_members.get(g)?.clone())))
            .collect(),
        instances: instances.into_iter().cloned().collect(),
        metadata: view.metadata.clone(),
        node: view.node.clone(),
        public_ips: view.public_ips.clone(),
        // Routes depend on nothing an instance changes; they are equal.
        routes: Vec::new(),
        schema: view.schema,
        security_groups: view
            .security_groups
            .iter()
            .filter(|g| named.contains(&g.id))
            .cloned()
            .collect(),
        subnets: view.subnets.clone(),
    }
}

/// Left-out lines about instances. Lines about groups and their members
/// name shared objects, which the sub-views render only for the groups
/// their instances use; with the set of used groups unchanged (checked by
/// the usage counts), the full render reports the same ones as before.
fn instance_lines(lines: &[String]) -> impl Iterator<Item = &String> {
    lines
        .iter()
        .filter(|l| !l.starts_with("security_groups[") && !l.starts_with("group_members["))
}

/// The usage counts after the pass, as a delta; `None` when a shared object
/// would gain its first user or lose its last, or a MAC would be shared.
fn usage_delta(baseline: &Usage, before: &Usage, after: &Usage) -> Option<UsageDelta> {
    let mut delta = UsageDelta {
        groups: count_delta(&before.groups, &after.groups),
        gateways: count_delta(&before.gateways, &after.gateways),
        ..Default::default()
    };
    let stays_in_use = |now: Option<&usize>, by: isize| {
        now.is_some_and(|&now| now > 0 && now.checked_add_signed(by).is_some_and(|n| n > 0))
    };
    if !delta
        .groups
        .iter()
        .all(|(g, by)| stays_in_use(baseline.groups.get(g), *by))
        || !delta
            .gateways
            .iter()
            .all(|(a, by)| stays_in_use(baseline.gateways.get(a), *by))
    {
        return None;
    }
    delta.macs_removed = before.macs.iter().copied().collect();
    if !delta.macs_removed.iter().all(|m| baseline.macs.contains(m)) {
        return None;
    }
    for mac in &after.macs {
        if baseline.macs.contains(mac) && !before.macs.contains(mac) {
            return None;
        }
        delta.macs_added.push(*mac);
    }
    Some(delta)
}

fn count_delta<K: std::hash::Hash + Eq + Clone>(
    before: &HashMap<K, usize>,
    after: &HashMap<K, usize>,
) -> HashMap<K, isize> {
    let mut delta: HashMap<K, isize> = HashMap::new();
    for (key, &n) in before {
        *delta.entry(key.clone()).or_default() -= n as isize;
    }
    for (key, &n) in after {
        *delta.entry(key.clone()).or_default() += n as isize;
    }
    delta
}

impl Fragments {
    /// The desired state the changes lead to, as far as the pass rendered
    /// it: the skeleton, the changed instances and the sets they touch (what
    /// the dataplane looks up while it writes the changes).
    pub fn desired(&self) -> &KernelState {
        &self.after
    }

    /// A changed group's member sets go into both fragments, when the cached
    /// state has them (a rule names the group), whether or not the sub-views'
    /// instances reach them; `None` when a member is not an IP address.
    fn set_members(
        &mut self,
        actual: &KernelState,
        group: &str,
        before: &NodeView,
        after: &NodeView,
    ) -> Result<(), InFull> {
        let inet = TableId::ours(Family::Inet);
        let names = [IpFamily::V4, IpFamily::V6].map(|f| group_set_name(group, f));
        let cached = actual
            .tables
            .get(&inet)
            .ok_or(InFull::DoesNotFitCachedState)?;
        if !names.iter().all(|n| cached.sets.contains_key(n)) {
            return Ok(());
        }
        for (fragment, view) in [(&mut self.before, before), (&mut self.after, after)] {
            let members = view.group_members.get(group).map_or(&[][..], Vec::as_slice);
            let (sets, unreadable) = group_member_sets(members);
            if !unreadable.is_empty() {
                return Err(InFull::GroupMemberNotAnAddress);
            }
            let table = fragment
                .tables
                .get_mut(&inet)
                .ok_or(InFull::DoesNotFitCachedState)?;
            for (name, set) in names.iter().zip(sets) {
                table.sets.insert(name.clone(), set);
            }
        }
        Ok(())
    }

    /// The kernel changes of the pass, checked against the cached actual
    /// state; `None` when a change does not fit it (see the module doc).
    pub fn changes(&self, actual: &KernelState) -> Option<ChangeSet<'_>> {
        let mut all = diff(&self.before, &self.after);
        let mut fits = true;
        all.changes
            .retain(|change| match fit(change, actual, &self.before) {
                Fit::Make => true,
                Fit::Shared => false,
                Fit::Conflict => {
                    fits = false;
                    false
                }
            });
        fits.then_some(all)
    }
}

enum Fit {
    /// A change to make.
    Make,
    /// A shared object: in use before and after (the usage counts say so).
    Shared,
    /// The cached state is not as the fragments assume: full path.
    Conflict,
}

fn fit(change: &Change, actual: &KernelState, before: &KernelState) -> Fit {
    let ownership: &AddressOwnership = &before.ownership;
    let is_gateway = |entry: &AddressEntry| {
        entry.device == ownership.bridge && ownership.gateways.contains(&entry.addr)
    };
    let check = |ok: bool| if ok { Fit::Make } else { Fit::Conflict };
    // A chain the pass changes or removes must be cached as the before
    // fragment renders it (rules compare by hash).
    let cached_as_before = |table: &TableId, name: &str| {
        let hashes = |c: &NftChain| c.rules.iter().map(|r| r.hash).collect::<Vec<_>>();
        match (
            cached_chain(actual, table, name),
            cached_chain(before, table, name),
        ) {
            (Some(cached), Some(rendered)) => hashes(cached) == hashes(rendered),
            _ => false,
        }
    };
    match *change {
        Change::AddAddress(entry) | Change::RemoveAddress(entry) if is_gateway(entry) => {
            Fit::Shared
        }
        Change::AddAddress(entry) => check(!actual.addresses.contains(entry)),
        Change::RemoveAddress(entry) => check(actual.addresses.contains(entry)),
        Change::AddChain { name, .. } | Change::RemoveChain { name, .. } if is_sg_chain(name) => {
            Fit::Shared
        }
        Change::AddChain { table, name, .. } if is_instance_chain(name) => {
            check(cached_chain(actual, table, name).is_none())
        }
        Change::RemoveChain { table, name, .. } | Change::ChangeChain { table, name, .. }
            if is_instance_chain(name) =>
        {
            check(cached_as_before(table, name))
        }
        Change::AddSet { name, .. } | Change::RemoveSet { name, .. } if is_group_set(name) => {
            Fit::Shared
        }
        Change::AddElement {
            table, set, key, ..
        } => check(cached_set(actual, table, set).is_some_and(|s| !s.elements.contains_key(key))),
        Change::ChangeElement {
            table,
            set,
            key,
            old: value,
            ..
        }
        | Change::RemoveElement {
            table,
            set,
            key,
            value,
        } => check(
            cached_set(actual, table, set).is_some_and(|s| s.elements.get(key) == Some(value)),
        ),
        _ => Fit::Conflict,
    }
}

fn cached_chain<'s>(actual: &'s KernelState, table: &TableId, name: &str) -> Option<&'s NftChain> {
    actual.tables.get(table)?.chains.get(name)
}

fn cached_set<'s>(actual: &'s KernelState, table: &TableId, name: &str) -> Option<&'s NftSet> {
    actual.tables.get(table)?.sets.get(name)
}

#[cfg(test)]
mod tests;
