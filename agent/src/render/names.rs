//! Names of the chains, sets and maps that render writes into our tables.

use crate::state::IpFamily;

pub const FORWARD_CHAIN: &str = "forward";
pub const NAT_PREROUTING_CHAIN: &str = "nat_prerouting";
pub const NAT_OUTPUT_CHAIN: &str = "nat_output";
pub const NAT_POSTROUTING_CHAIN: &str = "nat_postrouting";
pub const BRIDGE_PREROUTING_CHAIN: &str = "prerouting";
/// Bridge sets: the instance ports checked, and per port its MAC and IP.
pub const SPOOF_PORTS_SET: &str = "spoof_ports";
pub const PORT_MACS_SET: &str = "port_macs";
pub const PORT_IPS4_SET: &str = "port_ips4";
pub const PORT_IPS6_SET: &str = "port_ips6";

const GROUP_SET_PREFIX: [&str; 2] = ["grp_", "grp6_"];
const SG_CHAIN_PREFIX: &str = "sg_";
const INSTANCE_CHAIN_PREFIX: &str = "in_";

/// Both address families, IPv4 first (the order of every per-family pair).
pub(crate) const FAMILIES: [IpFamily; 2] = [IpFamily::V4, IpFamily::V6];

pub fn group_set_name(group: &str, family: IpFamily) -> String {
    let prefix = match family {
        IpFamily::V4 => GROUP_SET_PREFIX[0],
        IpFamily::V6 => GROUP_SET_PREFIX[1],
    };
    format!("{prefix}{group}")
}

pub fn sg_chain_name(group: &str) -> String {
    format!("{SG_CHAIN_PREFIX}{group}")
}

pub fn instance_chain_name(instance: &str) -> String {
    format!("{INSTANCE_CHAIN_PREFIX}{instance}")
}

pub fn instances_map_name(family: IpFamily) -> String {
    match family {
        IpFamily::V4 => "instances".to_string(),
        IpFamily::V6 => "instances6".to_string(),
    }
}

/// `dnat4`, `snat6`, `subnets4` and the like.
pub(super) fn per_family(base: &str, family: IpFamily) -> String {
    match family {
        IpFamily::V4 => format!("{base}4"),
        IpFamily::V6 => format!("{base}6"),
    }
}

/// The group whose member set this is (`grp_<g>`, `grp6_<g>`).
pub fn group_of_set(name: &str) -> Option<&str> {
    GROUP_SET_PREFIX
        .iter()
        .find_map(|prefix| name.strip_prefix(prefix))
}

/// The group whose chain this is (`sg_<g>`).
pub fn group_of_chain(name: &str) -> Option<&str> {
    name.strip_prefix(SG_CHAIN_PREFIX)
}

/// The instance whose chain this is (`in_<id>`).
pub fn instance_of_chain(name: &str) -> Option<&str> {
    name.strip_prefix(INSTANCE_CHAIN_PREFIX)
}

/// A group's member set (`grp_<g>`, `grp6_<g>`).
pub(crate) fn is_group_set(name: &str) -> bool {
    group_of_set(name).is_some()
}

/// A security group's chain (`sg_<g>`).
pub(crate) fn is_sg_chain(name: &str) -> bool {
    group_of_chain(name).is_some()
}

/// An instance's chain (`in_<id>`).
pub(crate) fn is_instance_chain(name: &str) -> bool {
    instance_of_chain(name).is_some()
}
