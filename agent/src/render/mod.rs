//! From a node view to the kernel state it asks for (docs/dataplane.md).
//!
//! `render` is pure and total: it parses every address itself, leaves out
//! whatever it cannot understand, says why in `left_out`, and renders the
//! rest. An instance that is left out gets no access (its private IP, when
//! readable, maps to `drop`), so a bad entity fails closed for itself only.
//!
//! Layout of `table inet edgenet` (fixed skeleton, only members vary):
//! - sets `grp_<g>` / `grp6_<g>`: members of a group named by a rule;
//! - maps `instances` / `instances6`: private IP → `jump in_<id>` (or `drop`);
//! - maps `dnat4` / `dnat6`: public IP → private IP; `snat4` / `snat6`: the
//!   reverse; sets `subnets4` / `subnets6`: every subnet (SNAT only leaves them);
//! - base chains `forward`, `nat_prerouting`, `nat_output`, `nat_postrouting`;
//! - chains `sg_<g>`, `in_<id>`, and `state` (holds the applied state id).
//!
//! NAT goes through maps rather than one rule per public IP so that adding an
//! instance is two element writes, whatever the number of instances.
//!
//! `table bridge edgenet`: base chain `prerouting` checks frames from the
//! instance ports in set `spoof_ports` against sets `port_macs`
//! (`iifname . ether saddr`, ARP sender MAC too), `port_ips4` / `port_ips6`
//! (`iifname . ip saddr`, ARP sender IP too); DHCP from 0.0.0.0 excepted.
//!
//! One stage per file: `skeleton` (what exists whatever the view holds, and
//! the metadata rule), `instances` (their chains, maps, ports and
//! addresses), `security_groups`, `routes`; `names` names the objects, and
//! `incremental` renders only the instances that changed.

pub mod incremental;
mod instances;
pub mod names;
mod routes;
mod security_groups;
mod skeleton;
#[cfg(test)]
mod tests;

use crate::snapshot::Snapshot;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::IpAddr;

use compact_str::ToCompactString;
use edgenet_model::{Instance, NodeView};
use ipnet::IpNet;

use crate::state::*;

/// The model's id and interface-name rules, by the names render has always
/// exported them under: one definition for the checker and the renderer.
pub use edgenet_model::validate::{
    is_valid_id as valid_id, is_valid_interface_name as valid_interface,
};
pub use names::{
    group_set_name, instance_chain_name, instances_map_name, sg_chain_name,
    BRIDGE_PREROUTING_CHAIN, FORWARD_CHAIN, NAT_OUTPUT_CHAIN, NAT_POSTROUTING_CHAIN,
    NAT_PREROUTING_CHAIN, PORT_IPS4_SET, PORT_IPS6_SET, PORT_MACS_SET, SPOOF_PORTS_SET,
};
pub(crate) use security_groups::group_member_sets;

use names::per_family;

/// Knobs that come from the agent's configuration, not from the view.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RenderSettings {
    pub route_protocol: u8,
    pub route_table: u32,
}

impl Default for RenderSettings {
    fn default() -> Self {
        RenderSettings {
            route_protocol: DEFAULT_ROUTE_PROTOCOL,
            route_table: MAIN_TABLE,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rendered {
    pub desired: KernelState,
    /// One line per entity left out: `instances[i-1].private_ip: ...`.
    pub left_out: Vec<String>,
    /// Who uses what the rendered instances share (for `incremental`).
    pub usage: Usage,
}

/// What the rendered instances share, counted, and what no two of them
/// may share: the incremental pass (`incremental`) must neither remove an
/// object that other instances still use nor render an instance that the
/// full render would leave out as a duplicate.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Usage {
    /// Security group id → instances whose `in_<id>` chain jumps to `sg_<g>`.
    pub groups: HashMap<String, usize>,
    /// Subnet gateway address on the bridge → instances that need it.
    pub gateways: HashMap<AddressEntry, usize>,
    /// MAC addresses of the rendered instances, as 48-bit numbers (a MAC is
    /// the one instance key that no kernel object is keyed by alone).
    pub macs: HashSet<u64>,
    /// Instances of the view that were not rendered (invalid or duplicate).
    pub instances_left_out: usize,
}

/// The kernel state `snapshot` asks for, with the instances its view left
/// out failing closed and its state id recorded. `None` when nothing in the
/// view is usable.
pub fn render_snapshot(snapshot: &Snapshot, settings: &RenderSettings) -> Option<Rendered> {
    let view = snapshot.view.as_deref()?;
    let mut rendered = render(view, settings);
    fail_closed_for(&mut rendered.desired, &snapshot.removed_instances);
    rendered.desired.state_id = Some(snapshot.state_id.clone());
    Some(rendered)
}

/// Render `view` into the kernel state it asks for.
pub fn render(view: &NodeView, settings: &RenderSettings) -> Rendered {
    let mut r = Renderer::new(view, settings);
    r.render_all();
    Rendered {
        desired: r.state,
        left_out: r.left_out,
        usage: r.usage,
    }
}

/// Make `instances` fail closed in `state`: their private IPs map to
/// `drop` unless an instance of the state already claims them.
///
/// For instances removed from the view before `render` (by
/// `edgenet_model::sanitize_view`): gone from the view, they would
/// otherwise get no entry at all, and traffic to them would pass
/// unfiltered.
pub fn fail_closed_for(state: &mut KernelState, instances: &[Instance]) {
    let Some(table) = state.tables.get_mut(&TableId::ours(Family::Inet)) else {
        return;
    };
    for instance in instances {
        let Ok(ip) = instance.private_ip.parse::<IpAddr>() else {
            continue;
        };
        if let Some(map) = table.sets.get_mut(&instances_map_name(IpFamily::of(&ip))) {
            map.elements
                .entry(ip.to_compact_string())
                .or_insert_with(|| Some(DROP_VALUE.into()));
        }
    }
}

/// One render in progress; each stage's file adds its methods.
struct Renderer<'a> {
    view: &'a NodeView,
    settings: &'a RenderSettings,
    state: KernelState,
    left_out: Vec<String>,
    usage: Usage,
    inet: NftTable,
    bridge: NftTable,
    /// Elements of `inet`'s and `bridge`'s sets, made into the sets' maps
    /// once at the end.
    inet_elements: StagedElements,
    bridge_elements: StagedElements,
    public_pool: Vec<IpNet>,
    subnets: BTreeMap<&'a str, ParsedSubnet>,
}

#[derive(Clone, Copy)]
struct ParsedSubnet {
    cidr: IpNet,
    gateway: Option<IpAddr>,
}

impl<'a> Renderer<'a> {
    fn new(view: &'a NodeView, settings: &'a RenderSettings) -> Self {
        Renderer {
            view,
            settings,
            state: KernelState::default(),
            left_out: Vec::new(),
            usage: Usage::default(),
            inet: NftTable::default(),
            bridge: NftTable::default(),
            inet_elements: StagedElements::default(),
            bridge_elements: StagedElements::default(),
            public_pool: Vec::new(),
            subnets: BTreeMap::new(),
        }
    }

    fn leave_out(&mut self, what: String) {
        self.left_out.push(what);
    }

    fn render_all(&mut self) {
        self.parse_public_pool();
        self.parse_subnets();
        self.add_skeleton();
        self.render_metadata();
        let instances = self.parse_instances();
        let used_groups = self.render_instances(&instances);
        self.render_security_groups(&used_groups);
        self.render_addresses(&instances);
        self.render_routes();
        self.state.ownership = AddressOwnership {
            public_interface: self.view.node.public_interface.clone(),
            public_pool: self.public_pool.clone(),
            bridge: self.view.node.bridge.clone(),
            gateways: self.subnets.values().filter_map(|s| s.gateway).collect(),
        };
        self.finish_tables();
    }

    /// Makes the staged elements into sets and puts both tables in the state.
    fn finish_tables(&mut self) {
        let mut inet = std::mem::take(&mut self.inet);
        std::mem::take(&mut self.inet_elements).into_sets(&mut inet);
        // Rebuilt from their own sorted entries, for full nodes (see
        // `StagedElements`): 10,000 `in_<id>` chains came in one by one.
        inet.chains = std::mem::take(&mut inet.chains).into_iter().collect();
        let mut bridge = std::mem::take(&mut self.bridge);
        std::mem::take(&mut self.bridge_elements).into_sets(&mut bridge);
        self.state.tables.insert(TableId::ours(Family::Inet), inet);
        self.state
            .tables
            .insert(TableId::ours(Family::Bridge), bridge);
    }

    fn parse_public_pool(&mut self) {
        for (index, text) in self.view.public_ips.iter().enumerate() {
            match parse_net_or_addr(text) {
                Some(net) => self.public_pool.push(net),
                None => self.leave_out(format!(
                    "public_ips[{index}]: not an address or CIDR: {text:?}"
                )),
            }
        }
    }

    fn parse_subnets(&mut self) {
        for subnet in &self.view.subnets {
            let Some(cidr) = parse_network(&subnet.cidr) else {
                self.leave_out(format!(
                    "subnets[{}].cidr: not a network CIDR: {:?}",
                    subnet.id, subnet.cidr
                ));
                continue;
            };
            let gateway = match &subnet.gateway {
                None => None,
                Some(text) => match text.parse::<IpAddr>() {
                    Ok(gw) if cidr.contains(&gw) => Some(gw),
                    _ => {
                        self.leave_out(format!(
                            "subnets[{}].gateway: not an address inside {cidr}: {text:?}",
                            subnet.id
                        ));
                        continue;
                    }
                },
            };
            let set = per_family("subnets", family_of_net(&cidr));
            if let Some(set) = self.inet.sets.get_mut(&set) {
                set.elements.insert(cidr.to_compact_string(), None);
            }
            self.subnets
                .insert(subnet.id.as_str(), ParsedSubnet { cidr, gateway });
        }
    }
}

/// Set elements gathered in lists, one per set, and made into each set's
/// map at once: a stable sort and a bulk build cost less than 80,000 tree
/// inserts, and leave the tree's nodes full, where inserts leave them half
/// to two thirds full (the desired state is what the agent keeps between
/// applies: ~3 MiB less at 10,000 instances). Of equal keys the last one
/// pushed wins, as with inserts.
#[derive(Default)]
struct StagedElements(BTreeMap<String, Vec<(ElemText, Option<ElemText>)>>);

impl StagedElements {
    fn push(&mut self, set: &str, key: ElemText, value: Option<ElemText>) {
        match self.0.get_mut(set) {
            Some(elements) => elements.push((key, value)),
            None => {
                self.0.insert(set.to_string(), vec![(key, value)]);
            }
        }
    }

    /// Into `table`'s sets; elements of a set the table does not have are
    /// dropped, as an insert into a missing set was.
    fn into_sets(self, table: &mut NftTable) {
        for (name, elements) in self.0 {
            let Some(set) = table.sets.get_mut(&name) else {
                continue;
            };
            if set.elements.is_empty() {
                set.elements = elements.into_iter().collect();
            } else {
                set.elements.extend(elements);
            }
        }
    }
}

fn insert_chain(
    table: &mut NftTable,
    name: &str,
    base: Option<BaseChain>,
    statements: Vec<Vec<Stmt>>,
) {
    let rules = number_rules(name, statements);
    table
        .chains
        .insert(name.to_string(), NftChain { base, rules });
}

fn number_rules(chain: &str, statements: Vec<Vec<Stmt>>) -> Vec<NftRule> {
    statements
        .into_iter()
        .enumerate()
        .map(|(position, stmts)| NftRule::new(chain, position, stmts))
        .collect()
}

fn family_of_net(net: &IpNet) -> IpFamily {
    IpFamily::of(&net.addr())
}

/// A CIDR, or a bare address as a host prefix.
fn parse_net_or_addr(text: &str) -> Option<IpNet> {
    if let Ok(net) = text.parse::<IpNet>() {
        return Some(net.trunc());
    }
    text.parse::<IpAddr>().ok().map(IpNet::from)
}

/// A CIDR whose host bits are zero (the kernel refuses others as route
/// destinations, and a set would silently widen them).
fn parse_network(text: &str) -> Option<IpNet> {
    let net = text.parse::<IpNet>().ok()?;
    (net == net.trunc()).then_some(net)
}
