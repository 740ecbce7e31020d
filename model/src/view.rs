//! Node views: the part of the model one node needs.

use std::collections::{BTreeMap, BTreeSet, HashSet};

use crate::addr::sort_numerically;
use crate::canonical::{canonical_instance, route_order};
use crate::error::{Entity, ValidationError};
use crate::types::*;
use crate::validate::{check, Document};

/// The groups named by `group` rules of `groups`: those whose members a
/// view must carry.
pub(crate) fn referenced_groups<'a>(
    groups: impl IntoIterator<Item = &'a SecurityGroup>,
) -> BTreeSet<&'a str> {
    groups
        .into_iter()
        .flat_map(|group| group.ingress())
        .filter_map(|rule| rule.group.as_deref())
        .collect()
}

/// Projects `node_id`'s view out of a (validated) model. `None` when the
/// model has no such node.
pub fn view_for(model: &CloudModel, node_id: &str) -> Option<NodeView> {
    let node = model.nodes.iter().find(|node| node.id == node_id)?;
    let mut instances: Vec<Instance> = model
        .instances
        .iter()
        .filter(|instance| instance.node == node_id)
        .map(|instance| canonical_instance(instance).into_owned())
        .collect();
    instances.sort_by(|a, b| a.id.cmp(&b.id));

    let wanted: HashSet<&str> = instances
        .iter()
        .flat_map(|instance| instance.security_groups())
        .map(String::as_str)
        .collect();
    let mut security_groups: Vec<SecurityGroup> = model
        .security_groups
        .iter()
        .filter(|group| wanted.contains(group.id.as_str()))
        .cloned()
        .collect();
    security_groups.sort_by(|a, b| a.id.cmp(&b.id));

    let group_members = members_of(model, &referenced_groups(&security_groups));

    let mut routes: Vec<Route> = model
        .routes
        .iter()
        .filter(|route| route.applies_to(node_id))
        .cloned()
        .collect();
    routes.sort_by(route_order);

    let mut subnets = model.subnets.clone();
    subnets.sort_by(|a, b| a.id.cmp(&b.id));
    let mut public_ips = model.public_ips.clone();
    sort_numerically(&mut public_ips);

    Some(NodeView {
        group_members,
        instances,
        metadata: model.metadata.clone(),
        node: node.clone(),
        public_ips,
        routes,
        schema: model.schema,
        security_groups,
        subnets,
    })
}

/// Private IPs of the members, on every node, of each of `groups`.
fn members_of(model: &CloudModel, groups: &BTreeSet<&str>) -> BTreeMap<String, Vec<String>> {
    let mut members: BTreeMap<String, Vec<String>> = groups
        .iter()
        .map(|group| (group.to_string(), Vec::new()))
        .collect();
    for instance in &model.instances {
        for group in instance.security_groups() {
            if let Some(ips) = members.get_mut(group) {
                ips.push(instance.private_ip.clone());
            }
        }
    }
    for ips in members.values_mut() {
        sort_numerically(ips);
    }
    members
}

/// A view with every invalid entity left out, and what was left out.
#[derive(Debug, Clone)]
pub struct SanitizedView {
    /// `None` when nothing in the view can be used (wrong schema, bad node).
    pub view: Option<NodeView>,
    pub left_out: Vec<ValidationError>,
}

/// Validates a view as an agent receives it and removes what fails, so one
/// bad entity never stops the rest (docs/model.md). Removing an entity can make
/// another invalid (an instance whose subnet went), so this repeats until
/// the view is clean; each round removes at least one entity.
pub fn sanitize_view(view: &NodeView) -> SanitizedView {
    let mut view = view.clone();
    let mut left_out = Vec::new();
    loop {
        let errors = check(&Document::of_view(&view));
        if errors.is_empty() {
            return SanitizedView {
                view: Some(view),
                left_out,
            };
        }
        let fatal = errors
            .iter()
            .any(|e| matches!(e.entity, Entity::Document | Entity::Node(_)));
        let entities: BTreeSet<Entity> = errors.iter().map(|e| e.entity).collect();
        left_out.extend(errors);
        if fatal {
            return SanitizedView {
                view: None,
                left_out,
            };
        }
        remove_entities(&mut view, &entities);
    }
}

fn remove_entities(view: &mut NodeView, entities: &BTreeSet<Entity>) {
    let gone = |entity: Entity| entities.contains(&entity);
    if gone(Entity::Metadata) {
        view.metadata = None;
    }
    retain_positions(&mut view.public_ips, |i| !gone(Entity::PublicIp(i)));
    retain_positions(&mut view.subnets, |i| !gone(Entity::Subnet(i)));
    retain_positions(&mut view.instances, |i| !gone(Entity::Instance(i)));
    retain_positions(&mut view.routes, |i| !gone(Entity::Route(i)));
    for (group_position, group) in view.security_groups.iter_mut().enumerate() {
        if let Some(rules) = group.ingress.as_mut() {
            retain_positions(rules, |rule| {
                !gone(Entity::Rule {
                    group: group_position,
                    rule,
                })
            });
        }
    }
    retain_positions(&mut view.security_groups, |i| {
        !gone(Entity::SecurityGroup(i))
    });
    for (group_position, ips) in view.group_members.values_mut().enumerate() {
        retain_positions(ips, |member| {
            !gone(Entity::GroupMember {
                group: group_position,
                member,
            })
        });
    }
}

fn retain_positions<T>(items: &mut Vec<T>, mut keep: impl FnMut(usize) -> bool) {
    let mut position = 0;
    items.retain(|_| {
        let kept = keep(position);
        position += 1;
        kept
    });
}
