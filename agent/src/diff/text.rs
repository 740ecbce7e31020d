//! How one change reads (`+ nft chain inet edgenet sg_web: 3 rules`), the
//! summary line, and the flat order plans sort by (docs/cli.md).

use super::plan::{PlanContext, PlanHeader};
use super::{Change, ChangeSet, Op};
use crate::state::{RouteKey, RouteSpec, MAIN_TABLE};

impl Op {
    fn sign(self) -> char {
        match self {
            Op::Add => '+',
            Op::Change => '~',
            Op::Remove => '-',
        }
    }
}

impl Change<'_> {
    pub fn kind(&self) -> &'static str {
        use Change::*;
        match self {
            AddRoute { .. } | ChangeRoute { .. } | RemoveRoute { .. } => "route",
            AddAddress(_) | RemoveAddress(_) => "address",
            AddTable(_) | RemoveTable(_) => "nft table",
            AddChain { .. } | ChangeChain { .. } | RemoveChain { .. } => "nft chain",
            AddSet { set, .. } if set.is_map() => "nft map",
            AddSet { .. } | RemoveSet { .. } => "nft set",
            AddElement { .. } | ChangeElement { .. } | RemoveElement { .. } => "nft element",
        }
    }

    /// The object, without its kind: `10.2.0.0/16 via 10.1.0.254 metric 100
    /// proto 159`, `inet edgenet sg_web`, `inet edgenet grp_lb { 10.1.0.40 }`.
    pub fn object(&self) -> String {
        use Change::*;
        match self {
            AddRoute { key, spec } | RemoveRoute { key, spec } => spec.describe(key),
            ChangeRoute { key, .. } => route_key_text(key),
            AddAddress(entry) | RemoveAddress(entry) => entry.to_string(),
            AddTable(table) | RemoveTable(table) => table.to_string(),
            AddChain { table, name, .. }
            | ChangeChain { table, name, .. }
            | RemoveChain { table, name, .. }
            | AddSet { table, name, .. }
            | RemoveSet { table, name } => format!("{table} {name}"),
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
            } => match value {
                Some(value) => format!("{table} {set} {{ {key} : {value} }}"),
                None => format!("{table} {set} {{ {key} }}"),
            },
            ChangeElement {
                table, set, key, ..
            } => format!("{table} {set} {{ {key} }}"),
        }
    }

    /// What changes, where the object alone does not say it.
    pub fn detail(&self) -> String {
        use Change::*;
        match self {
            ChangeRoute { key, old, new } => {
                format!(
                    "{} -> {}",
                    route_spec_text(key, old),
                    route_spec_text(key, new)
                )
            }
            AddChain { chain, .. } => rule_count(chain.rules.len()),
            ChangeChain { old, chain, .. } => format!(
                "{} -> {}",
                rule_count(old.rules.len()),
                rule_count(chain.rules.len())
            ),
            RemoveChain { old, .. } => rule_count(old.rules.len()),
            ChangeElement { old, new, .. } => format!(
                "{} -> {}",
                old.as_deref().unwrap_or("-"),
                new.as_deref().unwrap_or("-")
            ),
            _ => String::new(),
        }
    }

    /// `+ nft chain inet edgenet sg_web: 3 rules`
    pub fn line(&self) -> String {
        let detail = self.detail();
        let mut line = format!("{} {} {}", self.op().sign(), self.kind(), self.object());
        if !detail.is_empty() {
            line.push_str(": ");
            line.push_str(&detail);
        }
        line
    }

    /// The object with its kind, as `status` names drifted objects.
    pub fn named_object(&self) -> String {
        format!("{} {}", self.kind(), self.object())
    }
}

impl<'a> ChangeSet<'a> {
    /// Changes in printing order: by kind and object (bytewise), then op.
    pub fn sorted(&self) -> Vec<&Change<'a>> {
        let mut sorted: Vec<(String, &Change)> =
            self.changes.iter().map(|c| (c.named_object(), c)).collect();
        sorted.sort_by(|a, b| a.0.cmp(&b.0).then(a.1.op().cmp(&b.1.op())));
        sorted.into_iter().map(|(_, c)| c).collect()
    }

    pub fn summary(&self, node: &str, from_id: Option<&str>, to_id: &str) -> String {
        let counts = self.counts();
        format!(
            "{node}: {} -> {to_id}: {} to add, {} to change, {} to remove",
            from_id.unwrap_or("none"),
            counts.add,
            counts.change,
            counts.remove
        )
    }

    /// The text plan without views to name entities by or devices to
    /// check: objects are grouped by what their names say.
    pub fn render_text(&self, node: &str, from: Option<&str>, to: &str) -> String {
        let header = PlanHeader { node, from, to };
        self.render_plan_text(header, &PlanContext::default())
    }

    /// The JSON plan, on the same terms as [`ChangeSet::render_text`].
    pub fn render_json(&self, node: &str, from: Option<&str>, to: &str) -> String {
        let header = PlanHeader { node, from, to };
        self.render_plan_json(header, &PlanContext::default())
    }
}

fn rule_count(n: usize) -> String {
    if n == 1 {
        "1 rule".to_string()
    } else {
        format!("{n} rules")
    }
}

fn route_key_text(key: &RouteKey) -> String {
    if key.table == MAIN_TABLE {
        key.destination.to_string()
    } else {
        format!("{} table {}", key.destination, key.table)
    }
}

/// A route's description without its destination.
fn route_spec_text(key: &RouteKey, spec: &RouteSpec) -> String {
    let full = spec.describe(key);
    let prefix = key.destination.to_string();
    full.strip_prefix(&prefix)
        .unwrap_or(&full)
        .trim_start()
        .to_string()
}
