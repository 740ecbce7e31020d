//! Desired against actual: the ordered list of kernel changes. The plan an
//! operator reads, grouped by model entity ([`entity`]), is in [`plan`]
//! (text) and [`json`] (docs/cli.md).
//!
//! Granularity is the object the kernel lets us change alone: a route, an
//! address, a table, a chain (rewritten whole when its rule hashes differ),
//! a set or map, and a set or map element.

mod apply;
pub mod entity;
pub mod json;
pub mod plan;
pub mod text;

use std::collections::BTreeMap;

use serde::Serialize;

use crate::state::*;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Op {
    Add,
    Change,
    Remove,
}

/// One kernel change, borrowing what is needed to make it from the two
/// states it was computed from (the kernel's and the desired one).
///
/// Borrowed rather than owned: a first apply of 10,000 instances is 80,000
/// changes, and cloned names, keys and chains made the change set larger
/// than the desired state itself (23 MiB against 13 MiB) and most of the
/// diff's time. Fields are thin references (`&String`, not `&str`) to keep
/// a change at 48 bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change<'a> {
    AddRoute {
        key: &'a RouteKey,
        spec: &'a RouteSpec,
    },
    ChangeRoute {
        key: &'a RouteKey,
        old: &'a RouteSpec,
        new: &'a RouteSpec,
    },
    RemoveRoute {
        key: &'a RouteKey,
        spec: &'a RouteSpec,
    },
    AddAddress(&'a AddressEntry),
    RemoveAddress(&'a AddressEntry),
    /// An empty table; its chains and sets follow as their own changes.
    AddTable(&'a TableId),
    RemoveTable(&'a TableId),
    AddChain {
        table: &'a TableId,
        name: &'a String,
        chain: &'a NftChain,
    },
    /// The chain is flushed and its rules written anew.
    ChangeChain {
        table: &'a TableId,
        name: &'a String,
        old: &'a NftChain,
        chain: &'a NftChain,
    },
    RemoveChain {
        table: &'a TableId,
        name: &'a String,
        old: &'a NftChain,
    },
    /// A set or map; its elements are not part of this change (they
    /// follow as element changes).
    AddSet {
        table: &'a TableId,
        name: &'a String,
        set: &'a NftSet,
    },
    RemoveSet {
        table: &'a TableId,
        name: &'a String,
    },
    AddElement {
        table: &'a TableId,
        set: &'a String,
        key: &'a ElemText,
        value: &'a Option<ElemText>,
    },
    /// A map element whose value changed: deleted and added again.
    ChangeElement {
        table: &'a TableId,
        set: &'a String,
        key: &'a ElemText,
        old: &'a Option<ElemText>,
        new: &'a Option<ElemText>,
    },
    RemoveElement {
        table: &'a TableId,
        set: &'a String,
        key: &'a ElemText,
        value: &'a Option<ElemText>,
    },
}

impl Change<'_> {
    pub fn op(&self) -> Op {
        use Change::*;
        match self {
            AddRoute { .. }
            | AddAddress(_)
            | AddTable(_)
            | AddChain { .. }
            | AddSet { .. }
            | AddElement { .. } => Op::Add,
            ChangeRoute { .. } | ChangeChain { .. } | ChangeElement { .. } => Op::Change,
            RemoveRoute { .. }
            | RemoveAddress(_)
            | RemoveTable(_)
            | RemoveChain { .. }
            | RemoveSet { .. }
            | RemoveElement { .. } => Op::Remove,
        }
    }

    pub fn is_nft(&self) -> bool {
        !matches!(
            self,
            Change::AddRoute { .. }
                | Change::ChangeRoute { .. }
                | Change::RemoveRoute { .. }
                | Change::AddAddress(_)
                | Change::RemoveAddress(_)
        )
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Counts {
    pub add: usize,
    pub change: usize,
    pub remove: usize,
}

/// The ordered change list. Order is the diff's (routes, addresses, then
/// nftables table by table); drivers reorder what the kernel needs ordered,
/// and the printed forms sort by object.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ChangeSet<'a> {
    pub changes: Vec<Change<'a>>,
}

impl<'a> ChangeSet<'a> {
    pub fn is_empty(&self) -> bool {
        self.changes.is_empty()
    }

    pub fn len(&self) -> usize {
        self.changes.len()
    }

    pub fn counts(&self) -> Counts {
        let mut counts = Counts::default();
        for change in &self.changes {
            match change.op() {
                Op::Add => counts.add += 1,
                Op::Change => counts.change += 1,
                Op::Remove => counts.remove += 1,
            }
        }
        counts
    }

    pub fn nft_changes(&self) -> impl Iterator<Item = &Change<'a>> {
        self.changes.iter().filter(|c| c.is_nft())
    }

    pub fn netlink_changes(&self) -> impl Iterator<Item = &Change<'a>> {
        self.changes.iter().filter(|c| !c.is_nft())
    }
}

/// What must change for the kernel (`actual`) to become `desired`.
///
/// Addresses are removed only where `desired.ownership` owns them; routes
/// and tables in `actual` are ours by construction (the read filters them).
pub fn diff<'a>(actual: &'a KernelState, desired: &'a KernelState) -> ChangeSet<'a> {
    let mut changes = Vec::with_capacity(capacity_hint(actual, desired));
    walk(actual, desired, &mut changes);
    ChangeSet { changes }
}

/// How many changes the diff will have where that is cheap to know: the
/// whole content of what the kernel lacks entirely (a table, a set, all
/// routes or addresses), as on a first apply. A vector grown by doubling
/// held up to 6 MiB for that apply's 80,000 changes (48 bytes each), with
/// the old and the new buffer both alive as it grew, at the apply's peak.
/// Changes inside objects present on both sides (an incremental apply) are
/// few, and the vector grows for them as usual.
fn capacity_hint(actual: &KernelState, desired: &KernelState) -> usize {
    let mut hint = 0;
    if actual.routes.is_empty() {
        hint += desired.routes.len();
    }
    if actual.addresses.is_empty() {
        hint += desired.addresses.len();
    }
    for (id, want) in &desired.tables {
        let have = actual.tables.get(id);
        hint += want
            .chains
            .len()
            .saturating_sub(have.map_or(0, |t| t.chains.len()));
        for (name, set) in &want.sets {
            let existing = have.and_then(|t| t.sets.get(name));
            if existing.is_none_or(|old| !old.same_definition(set)) {
                hint += 2 + set.elements.len();
            }
        }
        hint += 1;
    }
    hint
}

fn walk<'a>(actual: &'a KernelState, desired: &'a KernelState, changes: &mut Vec<Change<'a>>) {
    diff_routes(actual, desired, changes);
    diff_addresses(actual, desired, changes);
    diff_tables(actual, desired, changes);
}

fn diff_routes<'a>(
    actual: &'a KernelState,
    desired: &'a KernelState,
    changes: &mut Vec<Change<'a>>,
) {
    for (key, new) in &desired.routes {
        match actual.routes.get(key) {
            None => changes.push(Change::AddRoute { key, spec: new }),
            Some(old) if !new.satisfied_by(old) => {
                changes.push(Change::ChangeRoute { key, old, new })
            }
            Some(_) => {}
        }
    }
    for (key, spec) in &actual.routes {
        if !desired.routes.contains_key(key) {
            changes.push(Change::RemoveRoute { key, spec });
        }
    }
}

fn diff_addresses<'a>(
    actual: &'a KernelState,
    desired: &'a KernelState,
    changes: &mut Vec<Change<'a>>,
) {
    for entry in desired.addresses.difference(&actual.addresses) {
        changes.push(Change::AddAddress(entry));
    }
    for entry in actual.addresses.difference(&desired.addresses) {
        if desired.ownership.owns(entry) {
            changes.push(Change::RemoveAddress(entry));
        }
    }
}

fn diff_tables<'a>(
    actual: &'a KernelState,
    desired: &'a KernelState,
    changes: &mut Vec<Change<'a>>,
) {
    for side in merge_join(&actual.tables, &desired.tables) {
        match side {
            Side::Want(id, want) => {
                changes.push(Change::AddTable(id));
                diff_table(id, &EMPTY_TABLE, want, changes);
            }
            Side::Both(id, have, want) => diff_table(id, have, want, changes),
            Side::Have(..) => {}
        }
    }
    for id in actual.tables.keys() {
        if !desired.tables.contains_key(id) {
            changes.push(Change::RemoveTable(id));
        }
    }
}

/// What a table missing from the kernel is diffed against.
static EMPTY_TABLE: NftTable = NftTable {
    chains: BTreeMap::new(),
    sets: BTreeMap::new(),
};

fn diff_table<'a>(
    id: &'a TableId,
    have: &'a NftTable,
    want: &'a NftTable,
    changes: &mut Vec<Change<'a>>,
) {
    diff_sets(id, have, want, changes);
    diff_chains(id, have, want, changes);
}

/// The elements a set made anew is diffed against.
static NO_ELEMENTS: Elements = BTreeMap::new();

fn diff_sets<'a>(
    table: &'a TableId,
    have: &'a NftTable,
    want: &'a NftTable,
    changes: &mut Vec<Change<'a>>,
) {
    for (name, set) in &want.sets {
        let existing = match have.sets.get(name) {
            Some(old) if old.same_definition(set) => &old.elements,
            Some(_) => {
                // Type or flags differ: the set is made anew.
                changes.push(Change::RemoveSet { table, name });
                changes.push(Change::AddSet { table, name, set });
                &NO_ELEMENTS
            }
            None => {
                changes.push(Change::AddSet { table, name, set });
                &NO_ELEMENTS
            }
        };
        diff_elements(table, name, existing, &set.elements, changes);
    }
    for name in have.sets.keys() {
        if !want.sets.contains_key(name) {
            changes.push(Change::RemoveSet { table, name });
        }
    }
}

type Elements = BTreeMap<ElemText, Option<ElemText>>;

fn diff_elements<'a>(
    table: &'a TableId,
    set: &'a String,
    have: &'a Elements,
    want: &'a Elements,
    changes: &mut Vec<Change<'a>>,
) {
    for side in merge_join(have, want) {
        match side {
            Side::Both(key, old, new) if old != new => changes.push(Change::ChangeElement {
                table,
                set,
                key,
                old,
                new,
            }),
            Side::Both(..) => {}
            Side::Want(key, value) => changes.push(Change::AddElement {
                table,
                set,
                key,
                value,
            }),
            Side::Have(key, value) => changes.push(Change::RemoveElement {
                table,
                set,
                key,
                value,
            }),
        }
    }
}

enum Side<'a, K, V> {
    Have(&'a K, &'a V),
    Want(&'a K, &'a V),
    Both(&'a K, &'a V, &'a V),
}

/// Walk two sorted maps together: one key comparison per entry rather
/// than a lookup (log n comparisons) per entry; most of a no-change diff.
fn merge_join<'a, K: Ord, V>(
    have: &'a BTreeMap<K, V>,
    want: &'a BTreeMap<K, V>,
) -> impl Iterator<Item = Side<'a, K, V>> {
    let mut have = have.iter().peekable();
    let mut want = want.iter().peekable();
    std::iter::from_fn(move || match (have.peek(), want.peek()) {
        (None, None) => None,
        (Some(_), None) => have.next().map(|(k, v)| Side::Have(k, v)),
        (None, Some(_)) => want.next().map(|(k, v)| Side::Want(k, v)),
        (Some((hk, _)), Some((wk, _))) => match hk.cmp(wk) {
            std::cmp::Ordering::Less => have.next().map(|(k, v)| Side::Have(k, v)),
            std::cmp::Ordering::Greater => want.next().map(|(k, v)| Side::Want(k, v)),
            std::cmp::Ordering::Equal => {
                let (k, old) = have.next()?;
                let (_, new) = want.next()?;
                Some(Side::Both(k, old, new))
            }
        },
    })
}

fn diff_chains<'a>(
    table: &'a TableId,
    have: &'a NftTable,
    want: &'a NftTable,
    changes: &mut Vec<Change<'a>>,
) {
    for side in merge_join(&have.chains, &want.chains) {
        match side {
            Side::Both(name, old, chain) if !old.same_content(chain) => {
                changes.push(Change::ChangeChain {
                    table,
                    name,
                    old,
                    chain,
                });
            }
            Side::Both(..) => {}
            Side::Want(name, chain) => changes.push(Change::AddChain { table, name, chain }),
            Side::Have(name, old) => changes.push(Change::RemoveChain { table, name, old }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn inet() -> TableId {
        TableId::ours(Family::Inet)
    }

    fn accept_rules(chain: &str, n: usize) -> Vec<NftRule> {
        (0..n)
            .map(|i| {
                NftRule::new(
                    chain,
                    i,
                    vec![
                        Stmt::matches(Field::Meta("l4proto"), Value::Number(i as u32)),
                        Stmt::Accept,
                    ],
                )
            })
            .collect()
    }

    fn route(dest: &str, gateway: &str, metric: u32) -> (RouteKey, RouteSpec) {
        (
            RouteKey {
                destination: dest.parse().unwrap(),
                table: MAIN_TABLE,
            },
            RouteSpec {
                gateway: Some(gateway.parse().unwrap()),
                device: None,
                metric: Some(metric),
                protocol: 159,
            },
        )
    }

    fn address(dev: &str, addr: &str, len: u8) -> AddressEntry {
        AddressEntry {
            device: dev.into(),
            addr: addr.parse().unwrap(),
            prefix_len: len,
        }
    }

    /// The states behind the fixture: 3 adds, 1 change, 2 removes.
    fn fixture() -> (KernelState, KernelState) {
        let mut actual = KernelState::default();
        let mut desired = KernelState {
            ownership: AddressOwnership {
                public_interface: "eth0".into(),
                public_pool: vec!["203.0.113.0/28".parse().unwrap()],
                bridge: "br0".into(),
                gateways: Default::default(),
            },
            ..Default::default()
        };
        let (key, spec) = route("10.2.0.0/16", "10.1.0.254", 100);
        actual.routes.insert(key, spec);
        // Foreign address (outside the pool): never removed.
        actual.addresses.insert(address("eth0", "192.0.2.10", 24));
        actual.addresses.insert(address("eth0", "203.0.113.9", 32));
        desired.addresses.insert(address("eth0", "203.0.113.5", 32));
        let mut have = NftTable::default();
        have.chains.insert(
            "sg_sg-web".into(),
            NftChain::regular(accept_rules("sg_sg-web", 3)),
        );
        let mut want = NftTable::default();
        want.chains.insert(
            "sg_sg-web".into(),
            NftChain::regular(accept_rules("sg_sg-web", 4)),
        );
        have.sets
            .insert("grp_sg-lb".into(), NftSet::plain("ipv4_addr", false));
        let mut group = NftSet::plain("ipv4_addr", false);
        group.elements.insert("10.1.0.40".into(), None);
        want.sets.insert("grp_sg-lb".into(), group);
        let mut instances = NftSet::map("ipv4_addr", SetValue::Verdict);
        instances
            .elements
            .insert("10.1.0.33".into(), Some(jump_value("in_i-1")));
        have.sets.insert("instances".into(), instances.clone());
        instances.elements.clear();
        instances
            .elements
            .insert("10.1.0.51".into(), Some(jump_value("in_i-2")));
        want.sets.insert("instances".into(), instances);
        actual.tables.insert(inet(), have);
        desired.tables.insert(inet(), want);
        (actual, desired)
    }

    const TEXT_FIXTURE: &str = "\
nc-1: v1-3f2a -> v1-9c1d: 3 to add, 1 to change, 3 to remove

# instance i-1: changes
- nft element inet edgenet instances { 10.1.0.33 : jump in_i-1 }

# instance i-2: changes
+ nft element inet edgenet instances { 10.1.0.51 : jump in_i-2 }

# security group sg-lb: members: 1 join, 0 leave
+ nft element inet edgenet grp_sg-lb { 10.1.0.40 }

# security group sg-web: rules change (1 added, 0 removed)
~ nft chain inet edgenet sg_sg-web: 3 rules -> 4 rules
    + meta l4proto 3 accept

# route 10.2.0.0/16: removed here
- route 10.2.0.0/16 via 10.1.0.254 metric 100 proto 159

# address 203.0.113.5: named by no instance or subnet of the view
+ address 203.0.113.5/32 dev eth0

# address 203.0.113.9: named by no instance or subnet of the view
- address 203.0.113.9/32 dev eth0
";

    const JSON_FIXTURE: &str = r#"{"format_version":2,"node":"nc-1","from":"v1-3f2a","to":"v1-9c1d","changes":[
{"op":"remove","kind":"nft element","object":"inet edgenet instances { 10.1.0.33 : jump in_i-1 }","detail":"","entity":{"kind":"instance","id":"i-1"},"family":"inet","table":"edgenet","set":"instances","key":"10.1.0.33","value":"jump in_i-1"},
{"op":"add","kind":"nft element","object":"inet edgenet instances { 10.1.0.51 : jump in_i-2 }","detail":"","entity":{"kind":"instance","id":"i-2"},"family":"inet","table":"edgenet","set":"instances","key":"10.1.0.51","value":"jump in_i-2"},
{"op":"add","kind":"nft element","object":"inet edgenet grp_sg-lb { 10.1.0.40 }","detail":"","entity":{"kind":"security_group","id":"sg-lb"},"family":"inet","table":"edgenet","set":"grp_sg-lb","key":"10.1.0.40"},
{"op":"change","kind":"nft chain","object":"inet edgenet sg_sg-web","detail":"3 rules -> 4 rules","entity":{"kind":"security_group","id":"sg-web"},"family":"inet","table":"edgenet","chain":"sg_sg-web","rules_added":["meta l4proto 3 accept"],"rules_removed":[]},
{"op":"remove","kind":"route","object":"10.2.0.0/16 via 10.1.0.254 metric 100 proto 159","detail":"","entity":{"kind":"route","id":"10.2.0.0/16"},"route":{"destination":"10.2.0.0/16","table":254,"gateway":"10.1.0.254","device":null,"metric":100,"protocol":159}},
{"op":"add","kind":"address","object":"203.0.113.5/32 dev eth0","detail":"","entity":{"kind":"address","id":"203.0.113.5"},"address":"203.0.113.5/32","device":"eth0"},
{"op":"remove","kind":"address","object":"203.0.113.9/32 dev eth0","detail":"","entity":{"kind":"address","id":"203.0.113.9"},"address":"203.0.113.9/32","device":"eth0"}
]}
"#;

    fn assert_lines(got: &str, want: &str) {
        let got: Vec<&str> = got.lines().collect();
        let want: Vec<&str> = want.lines().collect();
        for (i, (g, w)) in got.iter().zip(&want).enumerate() {
            assert_eq!(g, w, "line {}", i + 1);
        }
        assert_eq!(got.len(), want.len(), "number of lines");
    }

    #[test]
    fn text_diff_matches_fixture_line_by_line() {
        let (actual, desired) = fixture();
        let changes = diff(&actual, &desired);
        let text = changes.render_text("nc-1", Some("v1-3f2a"), "v1-9c1d");
        assert_lines(&text, TEXT_FIXTURE);
    }

    #[test]
    fn json_diff_matches_fixture_line_by_line_and_parses() {
        let (actual, desired) = fixture();
        let changes = diff(&actual, &desired);
        let json = changes.render_json("nc-1", Some("v1-3f2a"), "v1-9c1d");
        assert_lines(&json, JSON_FIXTURE);
        let parsed: serde_json::Value = serde_json::from_str(&json).unwrap();
        assert_eq!(parsed["changes"].as_array().unwrap().len(), 7);
        assert_eq!(parsed["from"], "v1-3f2a");
    }

    #[test]
    fn empty_diff_has_summary_only_and_null_from() {
        let changes = ChangeSet::default();
        assert_eq!(
            changes.render_text("nc-1", None, "v1-9c1d"),
            "nc-1: none -> v1-9c1d: 0 to add, 0 to change, 0 to remove\n"
        );
        assert_eq!(
            changes.render_json("nc-1", None, "v1-9c1d"),
            "{\"format_version\":2,\"node\":\"nc-1\",\"from\":null,\"to\":\"v1-9c1d\",\"changes\":[]}\n"
        );
    }

    #[test]
    fn applying_the_changes_to_actual_leaves_nothing_to_do() {
        let (before, desired) = fixture();
        let mut actual = before.clone();
        let changes = diff(&before, &desired);
        changes.apply_to(&mut actual, &[]);
        assert!(diff(&actual, &desired).is_empty());
        // The foreign address is still there.
        assert!(actual
            .addresses
            .contains(&address("eth0", "192.0.2.10", 24)));
    }

    #[test]
    fn route_fields_the_view_leaves_open_are_no_drift() {
        let (key, mut want) = route("10.2.0.0/16", "10.1.0.254", 100);
        want.metric = None;
        let mut have = want.clone();
        have.metric = Some(0);
        have.device = Some("eth0".into());
        let mut actual = KernelState::default();
        actual.routes.insert(key.clone(), have);
        let mut desired = KernelState::default();
        desired.routes.insert(key.clone(), want.clone());
        assert!(diff(&actual, &desired).is_empty());
        want.gateway = Some("10.1.0.253".parse().unwrap());
        desired.routes.insert(key, want);
        let changes = diff(&actual, &desired);
        assert_eq!(
            changes.changes[0].line(),
            "~ route 10.2.0.0/16: via 10.1.0.254 dev eth0 metric 0 proto 159 -> via 10.1.0.253 proto 159"
        );
    }

    #[test]
    fn missing_table_is_added_with_all_its_content() {
        let (_, desired) = fixture();
        let empty = KernelState::default();
        let changes = diff(&empty, &desired);
        let lines: Vec<String> = changes.changes.iter().map(|c| c.line()).collect();
        assert!(lines.contains(&"+ nft table inet edgenet".to_string()));
        assert!(lines.contains(&"+ nft chain inet edgenet sg_sg-web: 4 rules".to_string()));
        assert!(lines.contains(&"+ nft map inet edgenet instances".to_string()));
    }
}
