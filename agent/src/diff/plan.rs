//! The plan an operator reads before approving a change (docs/cli.md):
//! changes grouped by the model entity they come from, each chain's added
//! and removed rules in nft syntax under it, and objects this host cannot
//! take (a missing device) flagged.

use std::collections::{BTreeMap, HashMap};

use super::entity::{Attribution, Entity, EntityKind};
use super::{Change, ChangeSet, Op};
use crate::state::{NftChain, NftRule};

/// Whether a network device exists where the plan would be applied.
pub trait DeviceCheck {
    fn has_device(&self, name: &str) -> bool;
}

/// The devices of the network namespace this process runs in.
pub struct HostDevices;

impl DeviceCheck for HostDevices {
    fn has_device(&self, name: &str) -> bool {
        nix::net::if_::if_nametoindex(name).is_ok()
    }
}

/// What a plan is printed with besides the changes themselves.
#[derive(Default)]
pub struct PlanContext<'a> {
    pub attribution: Attribution,
    /// `None`: devices are not checked (a plan between two model files).
    pub devices: Option<&'a dyn DeviceCheck>,
}

/// The first line and the ids of a plan.
#[derive(Debug, Clone, Copy)]
pub struct PlanHeader<'a> {
    pub node: &'a str,
    pub from: Option<&'a str>,
    pub to: &'a str,
}

/// One entity's changes, in printing order.
pub(super) struct Group<'c, 'a> {
    pub entity: Entity,
    pub changes: Vec<&'c Change<'a>>,
}

impl<'a> ChangeSet<'a> {
    /// Changes by entity (node, subnets, instances, groups, routes), each
    /// group's changes sorted by object as the flat form sorts them.
    pub(super) fn groups(&self, attribution: &Attribution) -> Vec<Group<'_, 'a>> {
        let mut by_entity: BTreeMap<Entity, Vec<&Change<'a>>> = BTreeMap::new();
        for change in self.sorted() {
            by_entity
                .entry(attribution.entity_of(change))
                .or_default()
                .push(change);
        }
        by_entity
            .into_iter()
            .map(|(entity, changes)| Group { entity, changes })
            .collect()
    }

    /// The text plan: the summary line, then one block per entity: a
    /// `# entity: what happens` line, its changes one a line, the rules a
    /// chain gains (`+`) or loses (`-`) indented under it, and a `!` line
    /// under anything this host cannot take.
    pub fn render_plan_text(&self, header: PlanHeader, context: &PlanContext) -> String {
        let mut text = self.summary(header.node, header.from, header.to);
        text.push('\n');
        let mut blocked = 0;
        for group in self.groups(&context.attribution) {
            text.push_str(&format!("\n# {}: {}\n", group.entity, headline(&group)));
            for change in &group.changes {
                text.push_str(&change.line());
                text.push('\n');
                let rules = rule_changes(change);
                for rule in rules.removed.iter() {
                    text.push_str(&format!("    - {rule}\n"));
                }
                for rule in rules.added.iter() {
                    text.push_str(&format!("    + {rule}\n"));
                }
                if let Some(problem) = problem(change, context) {
                    blocked += 1;
                    text.push_str(&format!("    ! {problem}\n"));
                }
            }
        }
        if blocked > 0 {
            text.push_str(&format!(
                "\nwarning: {blocked} of these changes cannot be applied on this host yet (see the ! lines)\n"
            ));
        }
        text
    }
}

/// A chain's rules, as a plan lists them.
#[derive(Debug, Default, PartialEq, Eq)]
pub(super) struct RuleChanges {
    pub added: Vec<String>,
    pub removed: Vec<String>,
}

pub(super) fn rule_changes(change: &Change) -> RuleChanges {
    match change {
        Change::AddChain { chain, .. } => RuleChanges {
            added: chain.rules.iter().map(rule_text).collect(),
            removed: Vec::new(),
        },
        Change::RemoveChain { old, .. } => RuleChanges {
            added: Vec::new(),
            removed: old.rules.iter().map(rule_text).collect(),
        },
        Change::ChangeChain { old, chain, .. } => changed_rules(old, chain),
        _ => RuleChanges::default(),
    }
}

/// Rules compared by text when both sides have it, so a rule that only
/// moved is not listed; a chain read back from the kernel holds hashes
/// only (`desired`), and is compared by hash.
fn changed_rules(old: &NftChain, new: &NftChain) -> RuleChanges {
    let by_text = old.rules.iter().all(|rule| !rule.statements.is_empty());
    let key = |rule: &NftRule| {
        if by_text {
            rule.text()
        } else {
            rule.hash.to_string()
        }
    };
    let mut remaining: HashMap<String, usize> = HashMap::new();
    for rule in &old.rules {
        *remaining.entry(key(rule)).or_default() += 1;
    }
    let mut added = Vec::new();
    for rule in &new.rules {
        match remaining.get_mut(&key(rule)) {
            Some(count) if *count > 0 => *count -= 1,
            _ => added.push(rule_text(rule)),
        }
    }
    let mut removed = Vec::new();
    for rule in &old.rules {
        if let Some(count) = remaining.get_mut(&key(rule)).filter(|count| **count > 0) {
            *count -= 1;
            removed.push(rule_text(rule));
        }
    }
    RuleChanges { added, removed }
}

fn rule_text(rule: &NftRule) -> String {
    if rule.statements.is_empty() {
        format!("rule {} (the kernel's, text not read back)", rule.comment())
    } else {
        rule.text()
    }
}

/// Why this host cannot take `change` now, if it cannot.
pub(super) fn problem(change: &Change, context: &PlanContext) -> Option<String> {
    let devices = context.devices?;
    let device = match change {
        Change::AddAddress(entry) => Some(entry.device.as_str()),
        Change::AddRoute { spec, .. } | Change::ChangeRoute { new: spec, .. } => {
            spec.device.as_deref()
        }
        _ => None,
    }?;
    (!devices.has_device(device)).then(|| {
        format!("device {device} does not exist on this host: this cannot be applied until it does")
    })
}

/// What happens to the entity, in a few words.
fn headline(group: &Group) -> String {
    let mut phrases: Vec<String> = Vec::new();
    let count = |op: Op| group.changes.iter().filter(|c| c.op() == op).count();
    match group.entity.kind {
        EntityKind::Instance => instance_phrases(group, &mut phrases),
        EntityKind::SecurityGroup => group_phrases(group, &mut phrases),
        EntityKind::Route | EntityKind::Subnet => {
            let (add, change, remove) = (count(Op::Add), count(Op::Change), count(Op::Remove));
            phrases.push(
                match (add, change, remove) {
                    (_, 0, 0) => "added here",
                    (0, 0, _) => "removed here",
                    _ => "changes",
                }
                .to_string(),
            );
        }
        EntityKind::Node => phrases.push("node-wide objects".into()),
        EntityKind::Address => phrases.push("named by no instance or subnet of the view".into()),
    }
    if phrases.is_empty() {
        phrases.push("changes".into());
    }
    phrases.join("; ")
}

fn instance_phrases(group: &Group, phrases: &mut Vec<String>) {
    let has = |wanted: fn(&Change) -> bool| group.changes.iter().any(|c| wanted(c));
    let public_ips = |added: bool| {
        let addresses = group.changes.iter().filter_map(move |c| match c {
            Change::AddAddress(entry) if added => Some(entry.addr.to_string()),
            Change::RemoveAddress(entry) if !added => Some(entry.addr.to_string()),
            _ => None,
        });
        addresses.collect::<Vec<_>>().join(", ")
    };
    let (gained, lost) = (public_ips(true), public_ips(false));
    if has(|c| matches!(c, Change::AddChain { .. })) {
        phrases.push("starts on this node".into());
        if !gained.is_empty() {
            phrases.push(format!("with public IP {gained}"));
        }
        return;
    }
    if has(|c| matches!(c, Change::RemoveChain { .. })) {
        phrases.push("leaves this node".into());
        return;
    }
    if !gained.is_empty() {
        phrases.push(format!("public IP {gained} moves here"));
    }
    if !lost.is_empty() {
        phrases.push(format!("public IP {lost} moves away"));
    }
    if has(|c| matches!(c, Change::ChangeChain { .. })) {
        phrases.push("its security groups change".into());
    }
}

fn group_phrases(group: &Group, phrases: &mut Vec<String>) {
    let (mut joined, mut left) = (0, 0);
    for change in &group.changes {
        match change {
            Change::AddChain { .. } => phrases.push("now used on this node".into()),
            Change::RemoveChain { .. } => phrases.push("no longer used on this node".into()),
            Change::ChangeChain { .. } => {
                let rules = rule_changes(change);
                phrases.push(format!(
                    "rules change ({} added, {} removed)",
                    rules.added.len(),
                    rules.removed.len()
                ));
            }
            Change::AddElement { .. } => joined += 1,
            Change::RemoveElement { .. } => left += 1,
            _ => {}
        }
    }
    if joined + left > 0 {
        phrases.push(format!("members: {joined} join, {left} leave"));
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;
    use crate::diff::diff;
    use crate::state::{AddressEntry, Family, Field, KernelState, NftTable, Stmt, TableId, Value};

    /// A host with exactly these devices.
    struct Devices(BTreeSet<&'static str>);

    impl DeviceCheck for Devices {
        fn has_device(&self, name: &str) -> bool {
            self.0.contains(name)
        }
    }

    /// `[from group] <protocol> dport <port> accept`, one rule each.
    fn rules(chain: &str, ports: &[(Option<&str>, &'static str, u32)]) -> Vec<NftRule> {
        let rule = |(group, protocol, port): &(Option<&str>, &'static str, u32)| {
            let from = group
                .map(|g| Stmt::matches(Field::Payload("ip", "saddr"), Value::SetRef(g.into())));
            let port = Stmt::matches(Field::Payload(protocol, "dport"), Value::Number(*port));
            from.into_iter().chain([port, Stmt::Accept]).collect()
        };
        let rules = ports.iter().map(rule).enumerate();
        rules
            .map(|(i, statements)| NftRule::new(chain, i, statements))
            .collect()
    }

    fn with_chain(rules: Vec<NftRule>) -> KernelState {
        let mut table = NftTable::default();
        table
            .chains
            .insert("sg_sg-db".into(), NftChain::regular(rules));
        let mut state = KernelState::default();
        state.tables.insert(TableId::ours(Family::Inet), table);
        state
    }

    #[test]
    fn a_changed_chain_lists_the_rules_it_gains_and_loses() {
        let old = with_chain(rules("sg_sg-db", &[(None, "tcp", 22), (None, "udp", 53)]));
        let new = with_chain(rules(
            "sg_sg-db",
            &[(Some("grp_sg-web"), "tcp", 5432), (None, "udp", 53)],
        ));
        let text = diff(&old, &new).render_text("nc-1", None, "v1-b");
        let want = "\n# security group sg-db: rules change (1 added, 1 removed)\n\
                    ~ nft chain inet edgenet sg_sg-db: 2 rules -> 2 rules\n\
                    \x20   - tcp dport 22 accept\n\
                    \x20   + ip saddr @grp_sg-web tcp dport 5432 accept\n";
        assert!(text.ends_with(want), "{text}");
    }

    #[test]
    fn rules_read_back_from_the_kernel_are_compared_by_hash() {
        let mut kernel = with_chain(rules("sg_sg-db", &[(None, "tcp", 22)]));
        for chain in kernel
            .tables
            .values_mut()
            .flat_map(|t| t.chains.values_mut())
        {
            chain
                .rules
                .iter_mut()
                .for_each(|rule| rule.statements.clear());
        }
        let new = with_chain(rules("sg_sg-db", &[(None, "tcp", 22), (None, "tcp", 80)]));
        let changes = diff(&kernel, &new);
        let listed = rule_changes(&changes.changes[0]);
        assert_eq!(listed.added, vec!["tcp dport 80 accept".to_string()]);
        assert!(listed.removed.is_empty(), "{listed:?}");
    }

    #[test]
    fn an_address_on_a_missing_device_is_flagged() {
        let mut new = KernelState::default();
        for device in ["br0", "eth0"] {
            new.addresses.insert(AddressEntry {
                device: device.into(),
                addr: "10.1.0.1".parse().unwrap(),
                prefix_len: 16,
            });
        }
        let empty = KernelState::default();
        let changes = diff(&empty, &new);
        let devices = Devices(["eth0"].into());
        let context = PlanContext {
            attribution: Attribution::default(),
            devices: Some(&devices),
        };
        let header = PlanHeader {
            node: "nc-1",
            from: None,
            to: "v1-b",
        };
        let text = changes.render_plan_text(header, &context);
        assert!(text.contains(
            "+ address 10.1.0.1/16 dev br0\n    ! device br0 does not exist on this host"
        ));
        assert!(text.contains("+ address 10.1.0.1/16 dev eth0\n"));
        assert!(!text.contains("device eth0 does not exist"));
        assert!(text.ends_with(
            "warning: 1 of these changes cannot be applied on this host yet (see the ! lines)\n"
        ));
        let json: serde_json::Value =
            serde_json::from_str(&changes.render_plan_json(header, &context)).unwrap();
        let problems: Vec<&serde_json::Value> = json["changes"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|c| c.get("problem"))
            .collect();
        assert_eq!(problems.len(), 1);
        assert_eq!(json["format_version"], 2);
    }
}
