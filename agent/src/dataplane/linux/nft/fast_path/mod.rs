//! The nf_tables netlink fast path: a small change made of set and map
//! elements and of chains that only jump, drop, accept or return (an
//! instance's `in_<id>` chain) is written as one nfnetlink batch from our
//! own socket, without spawning `nft`.
//!
//! Why: before every transaction that adds an element or a rule, `nft`
//! fetches every chain of the table into its cache, and `inet edgenet`
//! holds a chain per instance. Adding one instance through `nft` cost
//! 45 ms with 10,000 instances and 230 ms with 50,000; the same batch from
//! here costs well under a millisecond of kernel time whatever the size.
//!
//! The batch is still one nf_tables transaction: the kernel takes all of it
//! or none of it. Anything outside this subset (sets, base chains, rules
//! that match packets, interval sets, new tables), and any failure here,
//! goes to `nft` instead, which stays the one writer of everything else and
//! the only reader. What this writes reads back through `nft` exactly as
//! what `nft` writes: the same keys, the same verdicts, the same comments.
//!
//! Messages and attributes are netlink-packet-core's types (`NetlinkMessage`,
//! `Nla`, the acknowledgement parser), with every length checked before it
//! is written (`message`). Why not the other crates that speak nf_tables:
//! - netlink-packet-netfilter (MIT) has typed nf_tables messages since 0.4,
//!   on the same netlink-packet-core. For the six messages written here it
//!   would be one more dependency tree (derive_more, zerocopy, bitflags),
//!   it has no typed `counter` expression and no libnftnl comment encoding
//!   (both would stay ours), and its attributes go through the same
//!   unchecked `u16` length cast, so the checks here would stay too;
//! - rustables is GPL-3.0: linking it would put the agent, Apache-2.0,
//!   under GPL-3.0 terms;
//! - nftnl (and nftnl-sys) bind libnftnl and libmnl, GPL C libraries the
//!   agent would have to link and ship on every node.
//!
//! - `abi`: the nf_tables numbers no crate exports for every target;
//! - `encode`: keys, values and rules in the kernel's layout (rules as
//!   their one description is written, `state::RuleWriter`);
//! - `message`: messages and attributes, lengths checked;
//! - `batch`: the batch being built;
//! - `socket`: sending it and reading the acknowledgements.

use std::collections::BTreeMap;

mod abi;
mod batch;
mod encode;
mod message;
mod socket;

pub use batch::Batch;
pub use socket::NfnlSocket;

use crate::diff::Change;
use crate::state::{KernelState, NftSet, TableId};
use batch::{BatchBuilder, ElementVerb, EncodedElement};
use encode::{element_value, encode_data};

/// Past this many changes `nft`'s one cache fetch is worth paying, and the
/// batch and its acknowledgements stay far below the socket buffers and the
/// 64 KiB limit of one netlink attribute.
pub const MAX_FAST_CHANGES: usize = 256;

/// Why the fast path did not write a batch (then `nft` does).
#[derive(Debug, thiserror::Error)]
pub enum NfnlError {
    #[error("cannot open an nfnetlink socket: {0}")]
    Open(std::io::Error),
    #[error("cannot send the batch: {0}")]
    Send(std::io::Error),
    #[error("cannot read the kernel's answer: {0}")]
    Receive(std::io::Error),
    #[error("the kernel refused to {what}: {error}")]
    Refused { what: String, error: std::io::Error },
    #[error("the kernel acknowledged {got} of {expected} messages")]
    MissingAcks { got: usize, expected: usize },
    #[error("the fast path does not write {0}")]
    Unsupported(&'static str),
    #[error("malformed answer from the kernel")]
    Malformed,
    #[error("{what} of {len} bytes is longer than the {max} bytes its length field holds")]
    TooLong {
        what: &'static str,
        len: usize,
        max: usize,
    },
}

/// The batch for `changes`, or `None` when `nft` is to write them: a change
/// outside what the fast path writes, or a length the netlink format cannot
/// hold (logged; `nft` then writes what it can, or refuses it whole).
pub fn plan(changes: &[&Change], desired: &KernelState, state_id: Option<&str>) -> Option<Batch> {
    match try_plan(changes, desired, state_id) {
        Ok(batch) => batch,
        Err(error) => {
            tracing::warn!(%error, "nftables fast path cannot encode the changes; writing through nft");
            None
        }
    }
}

/// As `plan`, with a length that does not fit as an error. Same order as
/// `nft::build_transaction`: chains, their rules, element deletes, element
/// adds, removed chains flushed, then deleted; the state id last.
pub fn try_plan(
    changes: &[&Change],
    desired: &KernelState,
    state_id: Option<&str>,
) -> Result<Option<Batch>, NfnlError> {
    if changes.len() > MAX_FAST_CHANGES || changes.iter().any(|c| !supported(c, desired)) {
        return Ok(None);
    }
    let Some(deletes) = encode_elements(changes, desired, ElementVerb::Delete) else {
        return Ok(None);
    };
    let Some(adds) = encode_elements(changes, desired, ElementVerb::Add) else {
        return Ok(None);
    };
    let mut batch = BatchBuilder::new()?;
    // Every new chain before any rule, so a jump to a chain made in this
    // batch finds it.
    for change in changes {
        if let Change::AddChain { table, name, .. } = change {
            batch.new_chain(table, name)?;
        }
    }
    for change in changes {
        match change {
            Change::AddChain { table, name, chain } => batch.rules(table, name, chain)?,
            Change::ChangeChain {
                table, name, chain, ..
            } => {
                batch.flush_chain(table, name)?;
                batch.rules(table, name, chain)?;
            }
            _ => {}
        }
    }
    for ((table, set), elements) in &deletes {
        batch.element_message(table, set, elements, ElementVerb::Delete)?;
    }
    for ((table, set), elements) in &adds {
        batch.element_message(table, set, elements, ElementVerb::Add)?;
    }
    let removed = || {
        changes.iter().filter_map(|c| match c {
            Change::RemoveChain { table, name, .. } => Some((table, name)),
            _ => None,
        })
    };
    for (table, name) in removed() {
        batch.flush_chain(table, name)?;
    }
    for (table, name) in removed() {
        batch.delete_chain(table, name)?;
    }
    if let Some(state_id) = state_id {
        batch.state(state_id)?;
    }
    batch.finish().map(Some)
}

fn supported(change: &Change, desired: &KernelState) -> bool {
    match change {
        Change::AddChain { chain, .. } | Change::ChangeChain { chain, .. } => {
            chain.base.is_none() && chain.rules.iter().all(encode::writes_rule)
        }
        // A base chain is never removed alone: its table goes with it.
        Change::RemoveChain { .. } => true,
        Change::AddElement { table, set, .. }
        | Change::ChangeElement { table, set, .. }
        | Change::RemoveElement { table, set, .. } => {
            desired_set(desired, table, set).is_some_and(|s| !s.interval)
        }
        _ => false,
    }
}

fn desired_set<'d>(desired: &'d KernelState, table: &TableId, set: &str) -> Option<&'d NftSet> {
    desired.tables.get(table)?.sets.get(set)
}

/// Elements one verb adds or deletes, per set (one message each), encoded;
/// `None` when one cannot be.
fn encode_elements<'c>(
    changes: &[&'c Change],
    desired: &KernelState,
    verb: ElementVerb,
) -> Option<BTreeMap<(&'c TableId, &'c str), Vec<EncodedElement<'c>>>> {
    let mut by_set: BTreeMap<_, Vec<_>> = BTreeMap::new();
    for change in changes {
        if let Some((table, set_name, key, value)) = element_of(change, verb) {
            let set = desired_set(desired, table, set_name)?;
            let encoded = (encode_data(set.key_type, key)?, element_value(set, value)?);
            by_set.entry((table, set_name)).or_default().push(encoded);
        }
    }
    Some(by_set)
}

/// The element (key and, in a map, its value) a change adds or deletes.
fn element_of<'c>(
    change: &Change<'c>,
    verb: ElementVerb,
) -> Option<(&'c TableId, &'c str, &'c str, Option<&'c str>)> {
    use ElementVerb::*;
    match (change, verb) {
        (
            Change::AddElement {
                table,
                set,
                key,
                value,
            },
            Add,
        )
        | (
            Change::RemoveElement {
                table,
                set,
                key,
                value,
            },
            Delete,
        ) => Some((table, set, key, value.as_deref())),
        (
            Change::ChangeElement {
                table,
                set,
                key,
                new,
                ..
            },
            Add,
        ) => Some((table, set, key, new.as_deref())),
        (
            Change::ChangeElement {
                table,
                set,
                key,
                old,
                ..
            },
            Delete,
        ) => Some((table, set, key, old.as_deref())),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::{ElemText, Family, NftChain, NftRule, SetValue, Stmt};

    /// What the encoder hand-written before netlink-packet-core wrote for
    /// `every_kind_of_change`: the same bytes, message for message.
    const EVERY_KIND_OF_CHANGE: &str = include_str!("every_kind_of_change.hex");

    #[test]
    fn new_chains_come_before_any_rule_that_may_jump_to_them() {
        let table = TableId::ours(Family::Inet);
        let (instance, group) = ("in_x".to_string(), "sg_new".to_string());
        let rules = vec![
            NftRule::new(&instance, 0, vec![Stmt::Jump(group.clone())]),
            NftRule::new(&instance, 1, vec![Stmt::Drop]),
        ];
        let (instance_chain, group_chain) = (NftChain::regular(rules), NftChain::regular(vec![]));
        let add_instance = Change::AddChain {
            table: &table,
            name: &instance,
            chain: &instance_chain,
        };
        let add_group = Change::AddChain {
            table: &table,
            name: &group,
            chain: &group_chain,
        };
        let batch = plan(&[&add_instance, &add_group], &KernelState::default(), None).unwrap();
        let first_rule = batch.purposes.iter().position(|p| p.contains("rule"));
        let last_chain = batch
            .purposes
            .iter()
            .rposition(|p| p.starts_with("add chain"));
        assert_eq!(
            (last_chain, first_rule),
            (Some(1), Some(2)),
            "{:?}",
            batch.purposes
        );
    }

    #[test]
    fn every_message_length_covers_its_bytes() {
        let table = TableId::ours(Family::Inet);
        let mut builder = BatchBuilder::new().unwrap();
        builder.new_chain(&table, "in_x").unwrap();
        let jump = encode::immediate(encode::Verdict::jump("sg_a")).unwrap();
        builder
            .rule(&table, "in_x", "edgenet:00", vec![jump])
            .unwrap();
        let batch = builder.finish().unwrap();
        assert_eq!(batch.messages(), 2);
        let mut rest = &batch.bytes[..];
        let mut count = 0;
        while !rest.is_empty() {
            let len = u32::from_ne_bytes(rest[0..4].try_into().unwrap()) as usize;
            assert_eq!(len % 4, 0, "messages stay aligned");
            rest = &rest[len..];
            count += 1;
        }
        assert_eq!(count, 4, "begin, two messages, end");
    }

    /// Calls `check` with a change of every kind the fast path writes, on
    /// both families, and the desired state they belong to.
    fn every_kind_of_change(check: impl FnOnce(&[&Change], &KernelState)) {
        let fixture = Fixture::new();
        let changes = fixture.changes();
        let changes: Vec<&Change> = changes.iter().collect();
        check(&changes, &fixture.desired);
    }

    /// What the changes of `every_kind_of_change` borrow.
    struct Fixture {
        tables: [TableId; 2],
        desired: KernelState,
        chains: [(String, NftChain); 2],
        gone: String,
        sets: [String; 4],
        keys: [ElemText; 5],
        values: [Option<ElemText>; 5],
    }

    impl Fixture {
        fn new() -> Self {
            let tables = [Family::Inet, Family::Bridge].map(TableId::ours);
            let mut desired = KernelState::default();
            let set = |key_type, value| NftSet {
                key_type,
                value,
                interval: false,
                elements: Default::default(),
            };
            let inet = &mut desired.tables.entry(tables[0].clone()).or_default().sets;
            inet.insert("instances".into(), set("ipv4_addr", SetValue::Verdict));
            inet.insert(
                "dnat4".into(),
                set("ipv4_addr", SetValue::Data("ipv4_addr")),
            );
            inet.insert("v6".into(), set("ipv6_addr", SetValue::None));
            let bridge = &mut desired.tables.entry(tables[1].clone()).or_default().sets;
            bridge.insert("macs".into(), set("ifname . ether_addr", SetValue::None));
            let statements = [
                Stmt::Jump("sg_a".into()),
                Stmt::Accept,
                Stmt::Return,
                Stmt::Drop,
            ];
            let rules = statements.into_iter().enumerate();
            let rules = rules.map(|(at, statement)| NftRule::new("in_x", at, vec![statement]));
            let group_rules = vec![NftRule::new("sg_a", 0, vec![Stmt::Accept])];
            let keys = [
                "10.1.0.33",
                "10.1.0.34",
                "2001:db8::1",
                "vn0 . d0:0d:00:00:00:01",
                "10.9.0.1",
            ];
            let values = [
                Some("jump in_x"),
                Some("drop"),
                Some("192.0.2.7"),
                None,
                Some("198.51.100.1"),
            ];
            Fixture {
                tables,
                desired,
                chains: [
                    ("in_x".into(), NftChain::regular(rules.collect())),
                    ("sg_a".into(), NftChain::regular(group_rules)),
                ],
                gone: "in_old".into(),
                sets: ["instances", "dnat4", "v6", "macs"].map(String::from),
                keys: keys.map(ElemText::from),
                values: values.map(|v| v.map(ElemText::from)),
            }
        }

        fn changes(&self) -> Vec<Change<'_>> {
            let [(chain, in_x), (group, sg_a)] = &self.chains;
            let (sets, keys, values) = (&self.sets, &self.keys, &self.values);
            let add = |table: usize, set: usize, key: usize, value: usize| Change::AddElement {
                table: &self.tables[table],
                set: &sets[set],
                key: &keys[key],
                value: &values[value],
            };
            let inet = &self.tables[0];
            vec![
                Change::AddChain {
                    table: inet,
                    name: chain,
                    chain: in_x,
                },
                Change::ChangeChain {
                    table: inet,
                    name: group,
                    old: sg_a,
                    chain: sg_a,
                },
                add(0, 0, 0, 0),
                Change::ChangeElement {
                    table: inet,
                    set: &sets[0],
                    key: &keys[1],
                    old: &values[0],
                    new: &values[1],
                },
                add(0, 1, 4, 2),
                Change::RemoveElement {
                    table: inet,
                    set: &sets[1],
                    key: &keys[4],
                    value: &values[4],
                },
                add(0, 2, 2, 3),
                add(1, 3, 3, 3),
                Change::RemoveChain {
                    table: inet,
                    name: &self.gone,
                    old: in_x,
                },
            ]
        }
    }

    #[test]
    fn batches_are_byte_for_byte_what_they_were() {
        every_kind_of_change(|changes, desired| {
            let batch = plan(changes, desired, Some("v1-abc")).unwrap();
            let hex: String = batch.bytes.iter().map(|b| format!("{b:02x}")).collect();
            assert_eq!(batch.messages(), 18);
            assert_eq!(hex, EVERY_KIND_OF_CHANGE.trim());
        });
    }

    #[test]
    fn a_state_id_too_long_for_a_comment_is_an_error_not_a_truncated_batch() {
        every_kind_of_change(|changes, desired| {
            for len in [300, 65_579] {
                let state_id = "s".repeat(len);
                let error = try_plan(changes, desired, Some(&state_id)).unwrap_err();
                let NfnlError::TooLong { what, .. } = error else {
                    panic!("expected a length error, got {error}");
                };
                assert_eq!(what, "a rule comment");
                // and `nft` is left to write it (or refuse it whole)
                assert!(plan(changes, desired, Some(&state_id)).is_none());
            }
        });
    }

    #[test]
    fn a_chain_name_past_the_attribute_length_is_an_error() {
        let table = TableId::ours(Family::Inet);
        let name = "c".repeat(65_579);
        let chain = NftChain::regular(vec![]);
        let add = Change::AddChain {
            table: &table,
            name: &name,
            chain: &chain,
        };
        let error = try_plan(&[&add], &KernelState::default(), None).unwrap_err();
        assert!(matches!(error, NfnlError::TooLong { .. }), "{error}");
    }
}
