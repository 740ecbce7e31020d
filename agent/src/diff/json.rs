//! The JSON form of a plan (docs/cli.md): one document, one change a line
//! so that it reads (and tests) like the text form. Each change keeps the
//! flat form's `op`, `kind`, `object` and `detail`, and adds structured
//! fields: the entity it comes from, the kernel object's family, table,
//! chain or set, key and value, the rules a chain gains and loses, the
//! route or address, and why this host cannot take it.

use std::fmt::Write as _;

use serde::Serialize;

use super::entity::Entity;
use super::plan::{problem, rule_changes, PlanContext, PlanHeader};
use super::{Change, ChangeSet, Op};
use crate::state::{RouteKey, RouteSpec};

/// Bumped when a field changes meaning or goes away; added fields keep it.
pub const PLAN_FORMAT_VERSION: u32 = 2;

#[derive(Serialize)]
struct JsonHeader<'a> {
    format_version: u32,
    node: &'a str,
    from: Option<&'a str>,
    to: &'a str,
}

#[derive(Serialize, Default)]
struct JsonChange<'c> {
    op: Option<Op>,
    kind: &'static str,
    object: String,
    detail: String,
    entity: Option<Entity>,
    #[serde(skip_serializing_if = "Option::is_none")]
    family: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    table: Option<&'c str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    chain: Option<&'c str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    set: Option<&'c str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    key: Option<&'c str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    value: Option<&'c str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    rules_added: Option<Vec<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    rules_removed: Option<Vec<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    route: Option<JsonRoute<'c>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    address: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    device: Option<&'c str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    problem: Option<String>,
}

#[derive(Serialize)]
struct JsonRoute<'c> {
    destination: String,
    table: u32,
    gateway: Option<String>,
    device: Option<&'c str>,
    metric: Option<u32>,
    protocol: u8,
}

impl ChangeSet<'_> {
    pub fn render_plan_json(&self, header: PlanHeader, context: &PlanContext) -> String {
        let head = serde_json::to_string(&JsonHeader {
            format_version: PLAN_FORMAT_VERSION,
            node: header.node,
            from: header.from,
            to: header.to,
        })
        .expect("plain strings serialise");
        // `{"node":..,"to":..}` → `{"node":..,"to":..,"changes":[`
        let mut text = head[..head.len() - 1].to_string();
        text.push_str(",\"changes\":[");
        let mut first = true;
        for group in self.groups(&context.attribution) {
            for change in group.changes {
                let mut json = json_change(change, context);
                json.entity = Some(group.entity.clone());
                let line = serde_json::to_string(&json).expect("plain strings serialise");
                let comma = if first { "" } else { "," };
                let _ = write!(text, "{comma}\n{line}");
                first = false;
            }
        }
        if !first {
            text.push('\n');
        }
        text.push_str("]}\n");
        text
    }
}

fn json_change<'c>(change: &'c Change<'c>, context: &PlanContext) -> JsonChange<'c> {
    use Change::*;
    let mut json = JsonChange {
        op: Some(change.op()),
        kind: change.kind(),
        object: change.object(),
        detail: change.detail(),
        problem: problem(change, context),
        ..Default::default()
    };
    match change {
        AddRoute { key, spec } | RemoveRoute { key, spec } => json.route = Some(route(key, spec)),
        ChangeRoute { key, new, .. } => json.route = Some(route(key, new)),
        AddAddress(entry) | RemoveAddress(entry) => {
            json.address = Some(format!("{}/{}", entry.addr, entry.prefix_len));
            json.device = Some(&entry.device);
        }
        AddTable(table) | RemoveTable(table) => {
            json.family = Some(table.family.as_str());
            json.table = Some(&table.name);
        }
        AddChain { table, name, .. }
        | ChangeChain { table, name, .. }
        | RemoveChain { table, name, .. } => {
            json.family = Some(table.family.as_str());
            json.table = Some(&table.name);
            json.chain = Some(name);
            let rules = rule_changes(change);
            json.rules_added = Some(rules.added);
            json.rules_removed = Some(rules.removed);
        }
        AddSet { table, name, .. } | RemoveSet { table, name } => {
            json.family = Some(table.family.as_str());
            json.table = Some(&table.name);
            json.set = Some(name);
        }
        AddElement {
            table,
            set,
            key,
            value,
        }
        | RemoveElement {
            table,
            set,
            key,
            value,
        } => {
            json.family = Some(table.family.as_str());
            json.table = Some(&table.name);
            json.set = Some(set);
            json.key = Some(key);
            json.value = value.as_deref();
        }
        ChangeElement {
            table,
            set,
            key,
            new,
            ..
        } => {
            json.family = Some(table.family.as_str());
            json.table = Some(&table.name);
            json.set = Some(set);
            json.key = Some(key);
            json.value = new.as_deref();
        }
    }
    json
}

fn route<'c>(key: &RouteKey, spec: &'c RouteSpec) -> JsonRoute<'c> {
    JsonRoute {
        destination: key.destination.to_string(),
        table: key.table,
        gateway: spec.gateway.map(|g| g.to_string()),
        device: spec.device.as_deref(),
        metric: spec.metric,
        protocol: spec.protocol,
    }
}
