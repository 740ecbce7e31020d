//! The typed kernel state edgenetd manages.
//!
//! One type serves both sides of the reconcile (Calico style): the state a
//! view renders to (desired) and the state read back from the kernel
//! (actual). The diff of the two is the list of pending changes.
//!
//! nftables rules are compared by the hash carried in their comment, not
//! expression by expression: the kernel prints rules back in its own
//! normalised form, so a hash of what we wrote is the only stable identity.
//! A rule read back from the kernel therefore has its hash (and handle) but
//! no statements.
//!
//! `rule` holds one rule and the one description of it every form is
//! derived from; `text` is its nft text form.

mod rule;
mod text;

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::IpAddr;

use ipnet::IpNet;

pub use rule::*;

/// Name of both our nftables tables (`inet edgenet`, `bridge edgenet`).
pub const TABLE_NAME: &str = "edgenet";
/// Route protocol number used when the configuration names none.
pub const DEFAULT_ROUTE_PROTOCOL: u8 = 159;
/// The kernel's main routing table.
pub const MAIN_TABLE: u32 = 254;
/// Prefix of the comment that marks one of our rules.
pub const RULE_COMMENT_PREFIX: &str = "edgenet:";
/// Chain whose single rule records the applied state id in its comment.
pub const STATE_CHAIN: &str = "state";
/// Prefix of that comment.
pub const STATE_COMMENT_PREFIX: &str = "edgenet-state:";

/// Everything of ours in the kernel, or everything we want there.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KernelState {
    pub routes: BTreeMap<RouteKey, RouteSpec>,
    pub addresses: BTreeSet<AddressEntry>,
    pub tables: BTreeMap<TableId, NftTable>,
    /// The `StateId` recorded in the kernel (actual) or to be recorded (desired).
    pub state_id: Option<String>,
    /// Which addresses we may remove; only meaningful in a desired state.
    pub ownership: AddressOwnership,
}

impl KernelState {
    /// Object counts by kind, as `edgenetd status` shows them.
    pub fn object_counts(&self) -> BTreeMap<&'static str, usize> {
        let mut counts = BTreeMap::new();
        counts.insert("route", self.routes.len());
        counts.insert("address", self.addresses.len());
        counts.insert("nft table", self.tables.len());
        let chains = self.tables.values().map(|t| t.chains.len()).sum();
        let sets = self.tables.values().map(|t| t.sets.len()).sum();
        let elements = self
            .tables
            .values()
            .flat_map(|t| t.sets.values())
            .map(|s| s.elements.len())
            .sum();
        let rules = self
            .tables
            .values()
            .flat_map(|t| t.chains.values())
            .map(|c| c.rules.len())
            .sum();
        counts.insert("nft chain", chains);
        counts.insert("nft set", sets);
        counts.insert("nft element", elements);
        counts.insert("nft rule", rules);
        counts
    }

    pub fn table(&self, family: Family) -> Option<&NftTable> {
        self.tables.get(&TableId::ours(family))
    }
}

/// The addresses edgenetd may delete (docs/dataplane.md "Ownership"): addresses
/// in the public pool on the public interface, subnet gateways on the bridge.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AddressOwnership {
    pub public_interface: String,
    pub public_pool: Vec<IpNet>,
    pub bridge: String,
    pub gateways: BTreeSet<IpAddr>,
}

impl AddressOwnership {
    pub fn owns(&self, entry: &AddressEntry) -> bool {
        if entry.device == self.public_interface
            && self
                .public_pool
                .iter()
                .any(|pool| pool.contains(&entry.addr))
        {
            return true;
        }
        entry.device == self.bridge && self.gateways.contains(&entry.addr)
    }
}

/// Routes are keyed like the kernel keys them (for our purposes):
/// destination and table.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RouteKey {
    pub destination: IpNet,
    pub table: u32,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteSpec {
    pub gateway: Option<IpAddr>,
    pub device: Option<String>,
    /// `None` in a desired route: the kernel's default metric is fine.
    pub metric: Option<u32>,
    pub protocol: u8,
}

impl RouteSpec {
    /// Whether the kernel's `actual` route is what this desired one asks
    /// for. Fields the view leaves open (device, metric) are not compared:
    /// the kernel fills them in, and that is no drift.
    pub fn satisfied_by(&self, actual: &RouteSpec) -> bool {
        self.gateway == actual.gateway
            && self.protocol == actual.protocol
            && (self.device.is_none() || self.device == actual.device)
            && (self.metric.is_none() || self.metric == actual.metric)
    }

    pub fn describe(&self, key: &RouteKey) -> String {
        let mut text = key.destination.to_string();
        if let Some(gateway) = &self.gateway {
            text.push_str(&format!(" via {gateway}"));
        }
        if let Some(device) = &self.device {
            text.push_str(&format!(" dev {device}"));
        }
        if key.table != MAIN_TABLE {
            text.push_str(&format!(" table {}", key.table));
        }
        if let Some(metric) = self.metric {
            text.push_str(&format!(" metric {metric}"));
        }
        text.push_str(&format!(" proto {}", self.protocol));
        text
    }
}

/// An address on a device: `addr/prefix_len dev device`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct AddressEntry {
    pub device: String,
    pub addr: IpAddr,
    pub prefix_len: u8,
}

impl fmt::Display for AddressEntry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{} dev {}", self.addr, self.prefix_len, self.device)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Family {
    Inet,
    Bridge,
}

impl Family {
    pub fn as_str(self) -> &'static str {
        match self {
            Family::Inet => "inet",
            Family::Bridge => "bridge",
        }
    }
}

impl fmt::Display for Family {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct TableId {
    pub family: Family,
    pub name: String,
}

impl TableId {
    pub fn ours(family: Family) -> Self {
        TableId {
            family,
            name: TABLE_NAME.to_string(),
        }
    }
}

impl fmt::Display for TableId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.family, self.name)
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NftTable {
    pub chains: BTreeMap<String, NftChain>,
    /// Sets and maps (a map is a set whose elements carry a value).
    pub sets: BTreeMap<String, NftSet>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NftChain {
    /// `Some` for a base chain (hooked into the kernel).
    pub base: Option<BaseChain>,
    pub rules: Vec<NftRule>,
}

impl NftChain {
    pub fn regular(rules: Vec<NftRule>) -> Self {
        NftChain { base: None, rules }
    }

    /// The chain's content identity: its rules' hashes in order.
    pub fn rule_hashes(&self) -> impl Iterator<Item = RuleHash> + '_ {
        self.rules.iter().map(|r| r.hash)
    }

    /// Same hook and same rules (by hash).
    pub fn same_content(&self, other: &NftChain) -> bool {
        self.base == other.base && self.rule_hashes().eq(other.rule_hashes())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChainType {
    Filter,
    Nat,
}

impl ChainType {
    pub fn as_str(self) -> &'static str {
        match self {
            ChainType::Filter => "filter",
            ChainType::Nat => "nat",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hook {
    Prerouting,
    Input,
    Forward,
    Output,
    Postrouting,
}

impl Hook {
    pub fn as_str(self) -> &'static str {
        match self {
            Hook::Prerouting => "prerouting",
            Hook::Input => "input",
            Hook::Forward => "forward",
            Hook::Output => "output",
            Hook::Postrouting => "postrouting",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BaseChain {
    pub chain_type: ChainType,
    pub hook: Hook,
    pub priority: i32,
    /// Policy accept always: whatever is not ours is not ours to filter.
    pub policy_accept: bool,
}

/// A set (no values) or a map (each element carries a value).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NftSet {
    pub key_type: &'static str,
    pub value: SetValue,
    /// Elements are prefixes (`flags interval`).
    pub interval: bool,
    /// Element key (canonical text, as the kernel prints it back) → value
    /// (`None` for a plain set; `jump in_x`, `drop`, or an address for maps).
    pub elements: BTreeMap<ElemText, Option<ElemText>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SetValue {
    /// A plain set.
    None,
    /// A verdict map: values are `jump <chain>` or `drop`.
    Verdict,
    /// A data map whose values are of this type (`ipv4_addr`, …).
    Data(&'static str),
}

impl NftSet {
    pub fn plain(key_type: &'static str, interval: bool) -> Self {
        NftSet {
            key_type,
            value: SetValue::None,
            interval,
            elements: BTreeMap::new(),
        }
    }

    pub fn map(key_type: &'static str, value: SetValue) -> Self {
        NftSet {
            key_type,
            value,
            interval: false,
            elements: BTreeMap::new(),
        }
    }

    /// Same type and flags (elements aside).
    pub fn same_definition(&self, other: &NftSet) -> bool {
        self.key_type == other.key_type
            && self.value == other.value
            && self.interval == other.interval
    }

    pub fn is_map(&self) -> bool {
        self.value != SetValue::None
    }
}

/// The text of a set element's key or value. Most are addresses, interface
/// names and `jump in_<id>` verdicts of at most 24 bytes, which this keeps
/// inline: 10,000 instances' ~90,000 such strings are no allocation each
/// (~3 MiB less kept, and less for render to allocate and free).
pub type ElemText = compact_str::CompactString;

/// A verdict-map value that jumps to `chain`.
pub fn jump_value(chain: &str) -> ElemText {
    compact_str::format_compact!("jump {chain}")
}

/// The verdict-map value that drops (an instance left out: fail closed).
pub const DROP_VALUE: &str = "drop";

/// Something the agent should know without a full read (docs/dataplane.md
/// "Drift"): one of our routes or addresses was removed or changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DriftEvent {
    /// The object, in the form the diff prints (`route 10.2.0.0/16 ...`).
    pub object: String,
    pub what: DriftKind,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DriftKind {
    Removed,
    Changed,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ownership_covers_pool_on_public_interface_and_gateways_on_bridge() {
        let owner = AddressOwnership {
            public_interface: "eth0".into(),
            public_pool: vec!["203.0.113.0/28".parse().unwrap()],
            bridge: "br0".into(),
            gateways: ["10.1.0.1".parse().unwrap()].into(),
        };
        let entry = |dev: &str, addr: &str| AddressEntry {
            device: dev.into(),
            addr: addr.parse().unwrap(),
            prefix_len: 32,
        };
        assert!(owner.owns(&entry("eth0", "203.0.113.5")));
        assert!(!owner.owns(&entry("eth0", "192.0.2.1")));
        assert!(!owner.owns(&entry("br0", "203.0.113.5")));
        assert!(owner.owns(&entry("br0", "10.1.0.1")));
    }
}
