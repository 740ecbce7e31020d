//! Instances: their checks, chains, map elements, NAT, ports and addresses.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::net::IpAddr;

use compact_str::{format_compact, ToCompactString};
use edgenet_model::addr::{format_mac, mac_bits, parse_mac};
use edgenet_model::validate::{is_valid_id, is_valid_interface_name};
use edgenet_model::{Instance, SecurityGroup};

use super::names::*;
use super::{insert_chain, ParsedSubnet, Renderer};
use crate::state::*;

pub(super) struct ParsedInstance<'a> {
    instance: &'a Instance,
    private_ip: IpAddr,
    public_ip: Option<IpAddr>,
    /// In the kernel's form, as `port_macs` holds it.
    mac: String,
    /// The same MAC as a number, for duplicates and `Usage::macs`.
    mac_bits: u64,
    subnet: ParsedSubnet,
}

impl<'a> Renderer<'a> {
    /// Parse each instance; report and skip (fail closed) what is invalid.
    pub(super) fn parse_instances(&mut self) -> Vec<ParsedInstance<'a>> {
        let mut parsed = Vec::new();
        // Hash sets: ten thousand string comparisons in a tree cost more
        // than the rest of the instance checks.
        let count = self.view.instances.len();
        let mut seen_ids = HashSet::with_capacity(count);
        let mut seen_private = HashSet::with_capacity(count);
        let mut seen_public = HashSet::with_capacity(count);
        let mut seen_interfaces = HashSet::with_capacity(count);
        let mut seen_macs = HashSet::with_capacity(count);
        for instance in &self.view.instances {
            match self.parse_instance(instance) {
                Ok(p) => {
                    let duplicate = if !seen_ids.insert(instance.id.as_str()) {
                        Some("id: duplicate")
                    } else if !seen_private.insert(p.private_ip) {
                        Some("private_ip: duplicate")
                    } else if p.public_ip.is_some_and(|ip| !seen_public.insert(ip)) {
                        Some("public_ip: duplicate")
                    } else if !seen_interfaces.insert(instance.interface.as_str()) {
                        Some("interface: duplicate")
                    } else if !seen_macs.insert(p.mac_bits) {
                        Some("mac: duplicate")
                    } else {
                        None
                    };
                    match duplicate {
                        Some(why) => {
                            self.leave_out(format!("instances[{}].{why}", instance.id));
                            self.usage.instances_left_out += 1;
                        }
                        None => {
                            self.usage.macs.insert(p.mac_bits);
                            parsed.push(p);
                        }
                    }
                }
                Err(why) => {
                    self.leave_out(format!("instances[{}].{why}", instance.id));
                    self.usage.instances_left_out += 1;
                    self.fail_closed(instance, &seen_private);
                }
            }
        }
        parsed
    }

    /// An instance we could not render still gets its private IP mapped to
    /// `drop`, so nothing reaches it until its entity is fixed.
    fn fail_closed(&mut self, instance: &Instance, taken: &HashSet<IpAddr>) {
        let Ok(ip) = instance.private_ip.parse::<IpAddr>() else {
            return;
        };
        if taken.contains(&ip) {
            return;
        }
        let map = instances_map_name(IpFamily::of(&ip));
        self.inet_elements
            .push(&map, ip.to_compact_string(), Some(DROP_VALUE.into()));
    }

    fn parse_instance(&self, instance: &'a Instance) -> Result<ParsedInstance<'a>, String> {
        if !is_valid_id(&instance.id) {
            return Err(format!("id: not a valid id: {:?}", instance.id));
        }
        let private_ip = instance
            .private_ip
            .parse::<IpAddr>()
            .map_err(|_| format!("private_ip: not an IP address: {:?}", instance.private_ip))?;
        let subnet = *self
            .subnets
            .get(instance.subnet.as_str())
            .ok_or_else(|| format!("subnet: unknown or invalid subnet {:?}", instance.subnet))?;
        if !subnet.cidr.contains(&private_ip) {
            return Err(format!(
                "private_ip: not inside subnet {} {}",
                instance.subnet, subnet.cidr
            ));
        }
        let public_ip = match &instance.public_ip {
            None => None,
            Some(text) => {
                let ip = text
                    .parse::<IpAddr>()
                    .map_err(|_| format!("public_ip: not an IP address: {text:?}"))?;
                if !self.public_pool.iter().any(|pool| pool.contains(&ip)) {
                    return Err(format!("public_ip: not inside public_ips: {ip}"));
                }
                if ip.is_ipv4() != private_ip.is_ipv4() {
                    return Err("public_ip: address family differs from private_ip".into());
                }
                Some(ip)
            }
        };
        if !is_valid_interface_name(&instance.interface) {
            return Err(format!(
                "interface: not a Linux interface name: {:?}",
                instance.interface
            ));
        }
        let mac = parse_mac(&instance.mac)
            .map_err(|_| format!("mac: not a unicast MAC address: {:?}", instance.mac))?;
        Ok(ParsedInstance {
            instance,
            private_ip,
            public_ip,
            mac: format_mac(&mac),
            mac_bits: mac_bits(&mac),
            subnet,
        })
    }

    /// Instance chains, map elements, NAT and anti-spoofing. Returns the
    /// security groups the instances use.
    pub(super) fn render_instances(
        &mut self,
        instances: &[ParsedInstance<'a>],
    ) -> BTreeSet<&'a str> {
        let groups: BTreeMap<&str, &SecurityGroup> = self
            .view
            .security_groups
            .iter()
            .map(|g| (g.id.as_str(), g))
            .collect();
        let mut used = BTreeSet::new();
        // The maps' names, by family (`IpAddr::is_ipv6` as the index).
        let maps = FAMILIES.map(|family| {
            (
                instances_map_name(family),
                per_family("dnat", family),
                per_family("snat", family),
            )
        });
        for p in instances {
            let chain = instance_chain_name(&p.instance.id);
            let mut rules = Vec::new();
            for group in p.instance.security_groups() {
                if !groups.contains_key(group.as_str()) || !is_valid_id(group) {
                    self.leave_out(format!(
                        "instances[{}].security_groups: unknown group {group:?} (no access from it)",
                        p.instance.id
                    ));
                    continue;
                }
                used.insert(group.as_str());
                count_use(&mut self.usage.groups, group);
                rules.push(vec![Stmt::Jump(sg_chain_name(group))]);
            }
            rules.push(vec![Stmt::Drop]);
            insert_chain(&mut self.inet, &chain, None, rules);
            let (instances, dnat, snat) = &maps[usize::from(p.private_ip.is_ipv6())];
            let private = p.private_ip.to_compact_string();
            self.inet_elements
                .push(instances, private.clone(), Some(jump_value(&chain)));
            if let Some(public) = p.public_ip {
                let public = public.to_compact_string();
                self.inet_elements
                    .push(dnat, public.clone(), Some(private.clone()));
                self.inet_elements.push(snat, private, Some(public));
            }
            self.render_port(p);
        }
        used
    }

    /// Anti-spoofing on the instance's port: its interface joins the
    /// checked ports, with its MAC and its IP as the only allowed sources.
    fn render_port(&mut self, p: &ParsedInstance<'_>) {
        let interface = &p.instance.interface;
        let ips = match p.private_ip {
            IpAddr::V4(_) => PORT_IPS4_SET,
            IpAddr::V6(_) => PORT_IPS6_SET,
        };
        for (set, key) in [
            (SPOOF_PORTS_SET, interface.to_compact_string()),
            (PORT_MACS_SET, format_compact!("{interface} . {}", p.mac)),
            (ips, format_compact!("{interface} . {}", p.private_ip)),
        ] {
            self.bridge_elements.push(set, key, None);
        }
    }

    pub(super) fn render_addresses(&mut self, instances: &[ParsedInstance<'_>]) {
        let node = &self.view.node;
        let public_ok = is_valid_interface_name(&node.public_interface);
        let bridge_ok = is_valid_interface_name(&node.bridge);
        if !public_ok {
            self.leave_out(format!(
                "node.public_interface: not a Linux interface name: {:?}",
                node.public_interface
            ));
        }
        if !bridge_ok && node.gateway_on_bridge() {
            self.leave_out(format!(
                "node.bridge: not a Linux interface name: {:?}",
                node.bridge
            ));
        }
        for p in instances {
            if let (Some(public), true) = (p.public_ip, public_ok) {
                self.state.addresses.insert(AddressEntry {
                    device: node.public_interface.clone(),
                    addr: public,
                    prefix_len: host_prefix(&public),
                });
            }
            if let (Some(gateway), true, true) =
                (p.subnet.gateway, node.gateway_on_bridge(), bridge_ok)
            {
                let entry = AddressEntry {
                    device: node.bridge.clone(),
                    addr: gateway,
                    prefix_len: p.subnet.cidr.prefix_len(),
                };
                match self.usage.gateways.get_mut(&entry) {
                    Some(users) => *users += 1,
                    None => {
                        self.usage.gateways.insert(entry.clone(), 1);
                    }
                }
                self.state.addresses.insert(entry);
            }
        }
    }
}

fn host_prefix(addr: &IpAddr) -> u8 {
    if addr.is_ipv4() {
        32
    } else {
        128
    }
}

/// Counts one more user of `key`, allocating the key only for its first.
fn count_use(counts: &mut HashMap<String, usize>, key: &str) {
    match counts.get_mut(key) {
        Some(count) => *count += 1,
        None => {
            counts.insert(key.to_string(), 1);
        }
    }
}
