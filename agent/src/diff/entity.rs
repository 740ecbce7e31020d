//! Which model entity each kernel change comes from, so that a plan reads
//! by instance, security group, route and subnet instead of by kernel
//! object.
//!
//! Names carry most of it (`sg_<group>`, `in_<instance>`, `grp_<group>`);
//! addresses and map keys are looked up in the views the change was
//! planned between, the new one first. What matches nothing is attributed
//! to the address itself, never guessed.

use std::collections::HashMap;
use std::fmt;

use edgenet_model::NodeView;
use serde::Serialize;

use super::Change;
use crate::render::names::{group_of_chain, group_of_set, instance_of_chain};
use crate::state::RouteKey;

/// Kinds in the order a plan lists them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum EntityKind {
    Node,
    Subnet,
    Instance,
    SecurityGroup,
    Route,
    /// An address no view names (an instance that is in neither view).
    Address,
}

impl EntityKind {
    pub fn as_str(self) -> &'static str {
        match self {
            EntityKind::Node => "node",
            EntityKind::Subnet => "subnet",
            EntityKind::Instance => "instance",
            EntityKind::SecurityGroup => "security group",
            EntityKind::Route => "route",
            EntityKind::Address => "address",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct Entity {
    pub kind: EntityKind,
    pub id: String,
}

impl Entity {
    fn new(kind: EntityKind, id: impl Into<String>) -> Self {
        Entity {
            kind,
            id: id.into(),
        }
    }
}

impl fmt::Display for Entity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.kind.as_str(), self.id)
    }
}

/// Lookups built from the views a change set was planned between.
#[derive(Debug, Clone, Default)]
pub struct Attribution {
    node: String,
    instance_by_address: HashMap<String, String>,
    instance_by_interface: HashMap<String, String>,
    subnet_by_address: HashMap<String, String>,
}

impl Attribution {
    /// `views`: the new view first, then the one planned from (if any), so
    /// that an object that moved is named after where it goes.
    pub fn from_views(node: &str, views: &[&NodeView]) -> Self {
        let mut attribution = Attribution {
            node: node.to_string(),
            ..Default::default()
        };
        for view in views.iter().rev() {
            attribution.learn(view);
        }
        attribution
    }

    fn learn(&mut self, view: &NodeView) {
        for instance in &view.instances {
            let id = &instance.id;
            let addresses = std::iter::once(&instance.private_ip).chain(&instance.public_ip);
            for address in addresses {
                self.instance_by_address.insert(address.clone(), id.clone());
            }
            self.instance_by_interface
                .insert(instance.interface.clone(), id.clone());
        }
        for subnet in &view.subnets {
            if let Some(gateway) = &subnet.gateway {
                self.subnet_by_address
                    .insert(gateway.clone(), subnet.id.clone());
            }
            self.subnet_by_address
                .insert(subnet.cidr.clone(), subnet.id.clone());
        }
    }

    pub fn entity_of(&self, change: &Change) -> Entity {
        use Change::*;
        match change {
            AddRoute { key, .. } | ChangeRoute { key, .. } | RemoveRoute { key, .. } => {
                route_entity(key)
            }
            AddAddress(entry) | RemoveAddress(entry) => self.by_address(&entry.addr.to_string()),
            AddTable(_) | RemoveTable(_) => self.node(),
            AddChain { name, .. } | ChangeChain { name, .. } | RemoveChain { name, .. } => {
                self.by_chain(name)
            }
            AddSet { name, .. } | RemoveSet { name, .. } => {
                group_of_set(name).map_or_else(|| self.node(), group_entity)
            }
            AddElement {
                set, key, value, ..
            }
            | RemoveElement {
                set, key, value, ..
            } => self.by_element(set, key, value.as_deref()),
            ChangeElement { set, key, new, .. } => self.by_element(set, key, new.as_deref()),
        }
    }

    fn node(&self) -> Entity {
        Entity::new(EntityKind::Node, self.node.clone())
    }

    fn by_address(&self, address: &str) -> Entity {
        if let Some(instance) = self.instance_by_address.get(address) {
            return Entity::new(EntityKind::Instance, instance.clone());
        }
        if let Some(subnet) = self.subnet_by_address.get(address) {
            return Entity::new(EntityKind::Subnet, subnet.clone());
        }
        Entity::new(EntityKind::Address, address)
    }

    fn by_chain(&self, chain: &str) -> Entity {
        if let Some(group) = group_of_chain(chain) {
            return group_entity(group);
        }
        if let Some(instance) = instance_of_chain(chain) {
            return Entity::new(EntityKind::Instance, instance);
        }
        self.node()
    }

    fn by_element(&self, set: &str, key: &str, value: Option<&str>) -> Entity {
        if let Some(group) = group_of_set(set) {
            return group_entity(group);
        }
        // Verdict maps name the instance chain they jump to.
        if let Some(chain) = value.and_then(|v| v.strip_prefix("jump ")) {
            return self.by_chain(chain);
        }
        // Bridge port sets are keyed `iifname . …`.
        let first = key.split(" . ").next().unwrap_or(key).trim_matches('"');
        if let Some(instance) = self.instance_by_interface.get(first) {
            return Entity::new(EntityKind::Instance, instance.clone());
        }
        let by_key = self.by_address(first);
        match (by_key.kind, value) {
            (EntityKind::Address, Some(value)) => self.by_address(value),
            _ => by_key,
        }
    }
}

fn group_entity(group: &str) -> Entity {
    Entity::new(EntityKind::SecurityGroup, group)
}

fn route_entity(key: &RouteKey) -> Entity {
    Entity::new(EntityKind::Route, key.destination.to_string())
}
