//! From a node view to the kernel state it asks for (DATAPLANE.md).
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

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::net::{IpAddr, Ipv4Addr};

use compact_str::{format_compact, ToCompactString};
use edgenet_model::{Instance, IpProtocol, NodeView, Rule, SecurityGroup};
use ipnet::IpNet;

use crate::desired::*;

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
/// may share: the incremental pass (`crate::incremental`) must neither
/// remove an object that other instances still use nor render an instance
/// that the full render would leave out as a duplicate.
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

pub fn group_set_name(group: &str, family: IpFamily) -> String {
    match family {
        IpFamily::V4 => format!("grp_{group}"),
        IpFamily::V6 => format!("grp6_{group}"),
    }
}
pub fn sg_chain_name(group: &str) -> String {
    format!("sg_{group}")
}
pub fn instance_chain_name(instance: &str) -> String {
    format!("in_{instance}")
}
fn per_family(base: &str, family: IpFamily) -> String {
    match family {
        IpFamily::V4 => format!("{base}4"),
        IpFamily::V6 => format!("{base}6"),
    }
}
pub fn instances_map_name(family: IpFamily) -> String {
    match family {
        IpFamily::V4 => "instances".to_string(),
        IpFamily::V6 => "instances6".to_string(),
    }
}

const FAMILIES: [IpFamily; 2] = [IpFamily::V4, IpFamily::V6];

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

struct ParsedInstance<'a> {
    instance: &'a Instance,
    private_ip: IpAddr,
    public_ip: Option<IpAddr>,
    mac: String,
    subnet: ParsedSubnet,
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

    /// Chains, sets and maps that exist whatever the view holds.
    fn add_skeleton(&mut self) {
        for family in FAMILIES {
            let addr = family.addr_type();
            self.inet.sets.insert(
                instances_map_name(family),
                NftSet::map(addr, SetValue::Verdict),
            );
            for nat in ["dnat", "snat"] {
                self.inet.sets.insert(
                    per_family(nat, family),
                    NftSet::map(addr, SetValue::Data(addr)),
                );
            }
            self.inet
                .sets
                .insert(per_family("subnets", family), NftSet::plain(addr, true));
        }
        // Subnets were parsed before the skeleton existed; add them now.
        for subnet in self.subnets.values() {
            let set = per_family("subnets", family_of_net(&subnet.cidr));
            if let Some(set) = self.inet.sets.get_mut(&set) {
                set.elements.insert(subnet.cidr.to_compact_string(), None);
            }
        }
        self.add_forward_chain();
        self.add_nat_chains();
        self.add_bridge_skeleton();
    }

    fn add_forward_chain(&mut self) {
        let mut stmts = vec![
            vec![
                Stmt::matches(
                    Field::Ct("state"),
                    Value::Keywords(vec!["established", "related"]),
                ),
                Stmt::Accept,
            ],
            vec![
                Stmt::matches(Field::Ct("state"), Value::Keywords(vec!["invalid"])),
                Stmt::Drop,
            ],
            // IPv6 neighbour discovery (router and neighbour solicitation and
            // advertisement, types 133-136) is what ARP is to IPv4: bridged
            // br_netfilter traffic reaches this hook, and without this rule
            // a group with no ICMPv6 rule would stop instances on one bridge
            // from finding each other's MAC addresses at all.
            vec![
                Stmt::matches(Field::Meta("l4proto"), Value::Number(58)),
                Stmt::matches(Field::Payload("icmpv6", "type"), Value::Range(133, 136)),
                Stmt::Accept,
            ],
        ];
        for family in FAMILIES {
            stmts.push(vec![Stmt::VerdictMap {
                field: Field::Payload(family.protocol(), "daddr"),
                map: instances_map_name(family),
            }]);
        }
        let base = BaseChain {
            chain_type: ChainType::Filter,
            hook: Hook::Forward,
            priority: 0,
            policy_accept: true,
        };
        insert_chain(&mut self.inet, FORWARD_CHAIN, Some(base), stmts);
    }

    fn add_nat_chains(&mut self) {
        let dnat_rules = || {
            FAMILIES
                .iter()
                .map(|&family| {
                    vec![Stmt::NatMap {
                        kind: NatKind::Dnat,
                        family,
                        field: Field::Payload(family.protocol(), "daddr"),
                        map: per_family("dnat", family),
                    }]
                })
                .collect::<Vec<_>>()
        };
        let nat_base = |hook, priority| BaseChain {
            chain_type: ChainType::Nat,
            hook,
            priority,
            policy_accept: true,
        };
        // The metadata rule is prepended to nat_prerouting by render_metadata.
        insert_chain(
            &mut self.inet,
            NAT_PREROUTING_CHAIN,
            Some(nat_base(Hook::Prerouting, -100)),
            dnat_rules(),
        );
        insert_chain(
            &mut self.inet,
            NAT_OUTPUT_CHAIN,
            Some(nat_base(Hook::Output, -100)),
            dnat_rules(),
        );
        let snat_rules = FAMILIES
            .iter()
            .map(|&family| {
                vec![
                    Stmt::differs(
                        Field::Payload(family.protocol(), "daddr"),
                        Value::SetRef(per_family("subnets", family)),
                    ),
                    Stmt::NatMap {
                        kind: NatKind::Snat,
                        family,
                        field: Field::Payload(family.protocol(), "saddr"),
                        map: per_family("snat", family),
                    },
                ]
            })
            .collect();
        insert_chain(
            &mut self.inet,
            NAT_POSTROUTING_CHAIN,
            Some(nat_base(Hook::Postrouting, 100)),
            snat_rules,
        );
    }

    /// Anti-spoofing for every instance port in one chain over sets keyed
    /// by interface (`iifname . ether saddr` and so on): a chain per port
    /// would mean 10,000 chains and 50,000 rules for nft to list and to
    /// fetch into its cache before each transaction.
    fn add_bridge_skeleton(&mut self) {
        self.bridge
            .sets
            .insert(SPOOF_PORTS_SET.to_string(), NftSet::plain("ifname", false));
        for (name, key_type) in [
            (PORT_MACS_SET, "ifname . ether_addr"),
            (PORT_IPS4_SET, "ifname . ipv4_addr"),
            (PORT_IPS6_SET, "ifname . ipv6_addr"),
        ] {
            self.bridge
                .sets
                .insert(name.to_string(), NftSet::plain(key_type, false));
        }
        let base = BaseChain {
            chain_type: ChainType::Filter,
            hook: Hook::Prerouting,
            priority: -200,
            policy_accept: true,
        };
        let iifname = Field::Meta("iifname");
        let ours = || Stmt::matches(iifname, Value::SetRef(SPOOF_PORTS_SET.to_string()));
        let not_in = |field: Field, set: &str| Stmt::ConcatMatch {
            fields: vec![iifname, field],
            equal: false,
            set: set.to_string(),
        };
        let rules = vec![
            vec![
                ours(),
                not_in(Field::Payload("ether", "saddr"), PORT_MACS_SET),
                Stmt::Drop,
            ],
            vec![
                ours(),
                not_in(Field::Payload("arp", "saddr ether"), PORT_MACS_SET),
                Stmt::Drop,
            ],
            vec![
                ours(),
                not_in(Field::Payload("arp", "saddr ip"), PORT_IPS4_SET),
                Stmt::Drop,
            ],
            // DHCP discovery comes from 0.0.0.0.
            vec![
                ours(),
                Stmt::matches(
                    Field::Payload("ip", "saddr"),
                    Value::Addr(Ipv4Addr::UNSPECIFIED.into()),
                ),
                Stmt::matches(Field::Payload("udp", "dport"), Value::Number(67)),
                Stmt::Accept,
            ],
            vec![
                ours(),
                not_in(Field::Payload("ip", "saddr"), PORT_IPS4_SET),
                Stmt::Drop,
            ],
            // Link-local and unspecified sources are needed for neighbour
            // discovery and DAD.
            vec![
                ours(),
                not_in(Field::Payload("ip6", "saddr"), PORT_IPS6_SET),
                Stmt::differs(
                    Field::Payload("ip6", "saddr"),
                    Value::Prefix("fe80::/10".parse().expect("constant")),
                ),
                Stmt::differs(
                    Field::Payload("ip6", "saddr"),
                    Value::Addr("::".parse().expect("constant")),
                ),
                Stmt::Drop,
            ],
        ];
        insert_chain(&mut self.bridge, BRIDGE_PREROUTING_CHAIN, Some(base), rules);
    }

    fn render_metadata(&mut self) {
        let Some(meta) = &self.view.metadata else {
            return;
        };
        let ip = meta.ip.parse::<IpAddr>();
        let target = meta.target_ip.parse::<IpAddr>();
        let port = u16::try_from(meta.port).ok().filter(|p| *p != 0);
        let target_port = u16::try_from(meta.target_port).ok().filter(|p| *p != 0);
        let (Ok(ip), Ok(target), Some(port), Some(target_port)) = (ip, target, port, target_port)
        else {
            self.leave_out(format!(
                "metadata: not a valid ip:port -> target_ip:target_port: {}:{} -> {}:{}",
                meta.ip, meta.port, meta.target_ip, meta.target_port
            ));
            return;
        };
        if ip.is_ipv4() != target.is_ipv4() {
            self.leave_out("metadata.target_ip: address family differs from metadata.ip".into());
            return;
        }
        let family = IpFamily::of(&ip);
        let stmts = vec![
            Stmt::matches(Field::Payload(family.protocol(), "daddr"), Value::Addr(ip)),
            Stmt::matches(Field::Meta("l4proto"), Value::Number(6)),
            Stmt::matches(Field::Payload("tcp", "dport"), Value::Number(port.into())),
            Stmt::Nat {
                kind: NatKind::Dnat,
                family,
                addr: target,
                port: Some(target_port),
            },
        ];
        let chain = self
            .inet
            .chains
            .get_mut(NAT_PREROUTING_CHAIN)
            .expect("skeleton has nat_prerouting");
        let mut all: Vec<Vec<Stmt>> = vec![stmts];
        all.extend(chain.rules.drain(..).map(|r| r.statements));
        chain.rules = number_rules(NAT_PREROUTING_CHAIN, all);
    }

    /// Parse each instance; report and skip (fail closed) what is invalid.
    fn parse_instances(&mut self) -> Vec<ParsedInstance<'a>> {
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
                    } else if !seen_macs.insert(p.mac.clone()) {
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
                            self.usage.macs.insert(mac_bits(&p.mac));
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
        if !valid_id(&instance.id) {
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
        if !valid_interface(&instance.interface) {
            return Err(format!(
                "interface: not a Linux interface name: {:?}",
                instance.interface
            ));
        }
        let mac = parse_unicast_mac(&instance.mac)
            .ok_or_else(|| format!("mac: not a unicast MAC address: {:?}", instance.mac))?;
        Ok(ParsedInstance {
            instance,
            private_ip,
            public_ip,
            mac,
            subnet,
        })
    }

    /// Instance chains, map elements, NAT and anti-spoofing. Returns the
    /// security groups the instances use.
    fn render_instances(&mut self, instances: &[ParsedInstance<'a>]) -> BTreeSet<&'a str> {
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
                if !groups.contains_key(group.as_str()) || !valid_id(group) {
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

    fn render_security_groups(&mut self, used: &BTreeSet<&'a str>) {
        let view = self.view;
        for group in view
            .security_groups
            .iter()
            .filter(|g| used.contains(g.id.as_str()))
        {
            let mut rules = Vec::new();
            for (index, rule) in group.ingress().iter().enumerate() {
                match self.render_rule(rule) {
                    Ok(rendered) => rules.extend(rendered),
                    Err(why) => self.leave_out(format!(
                        "security_groups[{}].ingress[{index}].{why} (rule left out)",
                        group.id
                    )),
                }
            }
            insert_chain(&mut self.inet, &sg_chain_name(&group.id), None, rules);
        }
    }

    /// One model rule becomes one nft rule per address family it covers
    /// (a group reference covers both: its members may be of either).
    fn render_rule(&mut self, rule: &Rule) -> Result<Vec<Vec<Stmt>>, String> {
        let protocol = rule
            .protocol
            .parse()
            .ok_or_else(|| format!("protocol: not a protocol: {}", rule.protocol))?;
        let l4 = l4_matches(rule, protocol)?;
        let sources: Vec<(IpFamily, Option<Stmt>)> = match (&rule.cidr, &rule.group) {
            (Some(cidr), None) => {
                let net =
                    parse_net_or_addr(cidr).ok_or_else(|| format!("cidr: not a CIDR: {cidr:?}"))?;
                let family = family_of_net(&net);
                let matcher = (net.prefix_len() != 0).then(|| {
                    Stmt::matches(
                        Field::Payload(family.protocol(), "saddr"),
                        Value::Prefix(net),
                    )
                });
                // A /0 matches the whole family: `meta nfproto`.
                let matcher = matcher.unwrap_or_else(|| {
                    Stmt::matches(
                        Field::Meta("nfproto"),
                        Value::Keyword(match family {
                            IpFamily::V4 => "ipv4",
                            IpFamily::V6 => "ipv6",
                        }),
                    )
                });
                vec![(family, Some(matcher))]
            }
            (None, Some(group)) => {
                if !valid_id(group) {
                    return Err(format!("group: not a valid id: {group:?}"));
                }
                self.ensure_group_sets(group);
                FAMILIES
                    .iter()
                    .map(|&family| {
                        let set = group_set_name(group, family);
                        let matcher = Stmt::matches(
                            Field::Payload(family.protocol(), "saddr"),
                            Value::SetRef(set),
                        );
                        (family, Some(matcher))
                    })
                    .collect()
            }
            _ => return Err("cidr: a rule needs exactly one of cidr and group".into()),
        };
        Ok(sources
            .into_iter()
            .map(|(family, source)| {
                let mut stmts: Vec<Stmt> = source.into_iter().collect();
                stmts.extend(l4.for_family(family));
                stmts.push(Stmt::Accept);
                stmts
            })
            .collect())
    }

    fn ensure_group_sets(&mut self, group: &str) {
        let v4 = group_set_name(group, IpFamily::V4);
        if self.inet.sets.contains_key(&v4) {
            return;
        }
        let members = self
            .view
            .group_members
            .get(group)
            .map_or(&[][..], Vec::as_slice);
        let (sets, unreadable) = group_member_sets(members);
        for index in unreadable {
            self.leave_out(format!(
                "group_members[{group}][{index}]: not an IP address: {:?}",
                members[index]
            ));
        }
        let [set4, set6] = sets;
        self.inet.sets.insert(v4, set4);
        self.inet
            .sets
            .insert(group_set_name(group, IpFamily::V6), set6);
    }

    fn render_addresses(&mut self, instances: &[ParsedInstance<'_>]) {
        let node = &self.view.node;
        let public_ok = valid_interface(&node.public_interface);
        let bridge_ok = valid_interface(&node.bridge);
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

    fn render_routes(&mut self) {
        for route in &self.view.routes {
            if !route.applies_to(&self.view.node.id) {
                continue;
            }
            let name = format!("routes[{}]", route.destination);
            let Some(destination) = parse_network(&route.destination) else {
                self.leave_out(format!("{name}.destination: not a network CIDR"));
                continue;
            };
            let gateway = match &route.gateway {
                None => None,
                Some(text) => match text.parse::<IpAddr>() {
                    Ok(gw) if gw.is_ipv4() == destination.addr().is_ipv4() => Some(gw),
                    _ => {
                        self.leave_out(format!(
                            "{name}.gateway: not an address of the destination's family: {text:?}"
                        ));
                        continue;
                    }
                },
            };
            if let Some(device) = &route.device {
                if !valid_interface(device) {
                    self.leave_out(format!(
                        "{name}.device: not a Linux interface name: {device:?}"
                    ));
                    continue;
                }
            }
            if gateway.is_none() && route.device.is_none() {
                self.leave_out(format!("{name}: needs a gateway or a device"));
                continue;
            }
            let metric = match route.metric.map(u32::try_from) {
                None => None,
                Some(Ok(metric)) => Some(metric),
                Some(Err(_)) => {
                    self.leave_out(format!("{name}.metric: out of range"));
                    continue;
                }
            };
            let key = RouteKey {
                destination,
                table: self.settings.route_table,
            };
            if self.state.routes.contains_key(&key) {
                self.leave_out(format!("{name}: duplicate destination"));
                continue;
            }
            let spec = RouteSpec {
                gateway,
                device: route.device.clone(),
                metric,
                protocol: self.settings.route_protocol,
            };
            self.state.routes.insert(key, spec);
        }
    }
}

/// The port / ICMP part of a rule, per address family.
struct L4Match {
    protocol: IpProtocol,
    ports: Option<(u16, u16)>,
    icmp_type: Option<u8>,
    icmp_code: Option<u8>,
}

impl L4Match {
    fn for_family(&self, family: IpFamily) -> Vec<Stmt> {
        let mut stmts = Vec::new();
        let (number, name) = match self.protocol {
            IpProtocol::All => return stmts,
            IpProtocol::Tcp => (6, "tcp"),
            IpProtocol::Udp => (17, "udp"),
            // ICMP from an IPv6 source means ICMPv6.
            IpProtocol::Icmp if family == IpFamily::V6 => (58, "icmpv6"),
            IpProtocol::Icmp => (1, "icmp"),
            IpProtocol::Other(n) => (n, ""),
        };
        stmts.push(Stmt::matches(
            Field::Meta("l4proto"),
            Value::Number(number.into()),
        ));
        if let Some((from, to)) = self.ports {
            let value = if from == to {
                Value::Number(from.into())
            } else {
                Value::Range(from.into(), to.into())
            };
            stmts.push(Stmt::matches(Field::Payload(name, "dport"), value));
        }
        if let Some(icmp_type) = self.icmp_type {
            stmts.push(Stmt::matches(
                Field::Payload(name, "type"),
                Value::Number(icmp_type.into()),
            ));
        }
        if let Some(code) = self.icmp_code {
            stmts.push(Stmt::matches(
                Field::Payload(name, "code"),
                Value::Number(code.into()),
            ));
        }
        stmts
    }
}

fn l4_matches(rule: &Rule, protocol: IpProtocol) -> Result<L4Match, String> {
    let ports = match (rule.from_port, rule.to_port) {
        (None, None) => None,
        (None, Some(_)) => return Err("to_port: given without from_port".into()),
        (Some(from), to) => {
            if !protocol.has_ports() {
                return Err("from_port: ports only with tcp or udp".into());
            }
            let to = to.unwrap_or(from);
            let from = u16::try_from(from).map_err(|_| "from_port: out of range".to_string())?;
            let to = u16::try_from(to).map_err(|_| "to_port: out of range".to_string())?;
            if from > to {
                return Err("to_port: below from_port".into());
            }
            Some((from, to))
        }
    };
    let icmp_field = |value: Option<i64>, name: &str| -> Result<Option<u8>, String> {
        match value {
            None => Ok(None),
            Some(_) if protocol != IpProtocol::Icmp => Err(format!("{name}: only with icmp")),
            Some(v) => u8::try_from(v)
                .map(Some)
                .map_err(|_| format!("{name}: out of range")),
        }
    };
    let icmp_type = icmp_field(rule.icmp_type, "icmp_type")?;
    let icmp_code = icmp_field(rule.icmp_code, "icmp_code")?;
    if icmp_code.is_some() && icmp_type.is_none() {
        return Err("icmp_code: given without icmp_type".into());
    }
    Ok(L4Match {
        protocol,
        ports,
        icmp_type,
        icmp_code,
    })
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

fn host_prefix(addr: &IpAddr) -> u8 {
    if addr.is_ipv4() {
        32
    } else {
        128
    }
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

/// MODEL.md ids: `[A-Za-z0-9._-]{1,64}`.
pub fn valid_id(id: &str) -> bool {
    (1..=64).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// Linux interface names: 1..=15 bytes, no `/`, `:`, whitespace; we also
/// refuse control characters and quotes, which nft would choke on.
pub fn valid_interface(name: &str) -> bool {
    (1..=15).contains(&name.len())
        && name != "."
        && name != ".."
        && name
            .chars()
            .all(|c| c.is_ascii_graphic() && !matches!(c, '/' | ':' | '"' | '\\'))
}

/// A unicast MAC in the lower-case colon form the kernel prints back.
/// A group's member sets, IPv4 and IPv6, and the positions of the members
/// that are not IP addresses.
pub(crate) fn group_member_sets(members: &[String]) -> ([NftSet; 2], Vec<usize>) {
    let mut elements = [Vec::new(), Vec::new()];
    let mut unreadable = Vec::new();
    for (index, text) in members.iter().enumerate() {
        match text.parse::<IpAddr>() {
            Ok(ip) => elements[usize::from(ip.is_ipv6())].push((ip.to_compact_string(), None)),
            Err(_) => unreadable.push(index),
        }
    }
    let mut sets = FAMILIES.map(|family| NftSet::plain(family.addr_type(), false));
    for (set, elements) in sets.iter_mut().zip(elements) {
        set.elements = elements.into_iter().collect();
    }
    (sets, unreadable)
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

/// A MAC as `parse_unicast_mac` prints it, as a number.
fn mac_bits(canonical: &str) -> u64 {
    canonical
        .bytes()
        .filter_map(|b| (b as char).to_digit(16))
        .fold(0, |bits, digit| bits << 4 | u64::from(digit))
}

fn parse_unicast_mac(text: &str) -> Option<String> {
    let bytes: Vec<u8> = text
        .split(':')
        .map(|part| {
            if part.len() == 2 {
                u8::from_str_radix(part, 16).ok()
            } else {
                None
            }
        })
        .collect::<Option<Vec<u8>>>()?;
    if bytes.len() != 6 || bytes[0] & 1 == 1 || bytes.iter().all(|b| *b == 0) {
        return None;
    }
    Some(
        bytes
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<Vec<_>>()
            .join(":"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::diff::diff;

    pub(crate) fn example_view() -> NodeView {
        serde_json::from_str(include_str!("dataplane/testdata/view-nc-1.json")).unwrap()
    }

    fn inet(state: &KernelState) -> &NftTable {
        state.table(Family::Inet).unwrap()
    }

    fn rule_texts(chain: &NftChain) -> Vec<String> {
        chain.rules.iter().map(|r| r.text()).collect()
    }

    #[test]
    fn example_view_renders_as_dataplane_md_describes() {
        let rendered = render(&example_view(), &RenderSettings::default());
        assert!(rendered.left_out.is_empty(), "{:?}", rendered.left_out);
        let state = &rendered.desired;
        let table = inet(state);
        assert_eq!(
            rule_texts(&table.chains["sg_sg-web"]),
            [
                "meta nfproto ipv4 meta l4proto 6 tcp dport 22 accept",
                "ip saddr @grp_sg-lb meta l4proto 6 tcp dport 80 accept",
                "ip6 saddr @grp6_sg-lb meta l4proto 6 tcp dport 80 accept",
                "ip saddr 10.0.0.0/8 meta l4proto 1 icmp type 8 accept",
                "ip saddr @grp_sg-web accept",
                "ip6 saddr @grp6_sg-web accept",
            ]
        );
        assert_eq!(
            rule_texts(&table.chains["in_i-0a1b2c3d"]),
            ["jump sg_sg-web", "drop"]
        );
        assert_eq!(
            table.sets["instances"].elements["10.1.0.33"].as_deref(),
            Some("jump in_i-0a1b2c3d")
        );
        assert_eq!(
            table.sets["dnat4"].elements["203.0.113.5"].as_deref(),
            Some("10.1.0.33")
        );
        assert_eq!(
            table.sets["snat4"].elements["10.1.0.33"].as_deref(),
            Some("203.0.113.5")
        );
        assert!(table.sets["grp_sg-lb"].elements.contains_key("10.1.0.40"));
        assert_eq!(
            rule_texts(&table.chains["nat_prerouting"])[0],
            "ip daddr 169.254.169.254 meta l4proto 6 tcp dport 80 dnat ip to 10.111.5.11:8773"
        );
        let addresses: Vec<String> = state.addresses.iter().map(|a| a.to_string()).collect();
        assert_eq!(
            addresses,
            ["10.1.0.1/16 dev br0", "203.0.113.5/32 dev eth0"]
        );
        let (key, route) = state.routes.iter().next().unwrap();
        assert_eq!(
            route.describe(key),
            "10.2.0.0/16 via 10.1.0.254 metric 100 proto 159"
        );
        let bridge = state.table(Family::Bridge).unwrap();
        assert_eq!(
            rule_texts(&bridge.chains[BRIDGE_PREROUTING_CHAIN]),
            [
                "meta iifname @spoof_ports meta iifname . ether saddr != @port_macs drop",
                "meta iifname @spoof_ports meta iifname . arp saddr ether != @port_macs drop",
                "meta iifname @spoof_ports meta iifname . arp saddr ip != @port_ips4 drop",
                "meta iifname @spoof_ports ip saddr 0.0.0.0 udp dport 67 accept",
                "meta iifname @spoof_ports meta iifname . ip saddr != @port_ips4 drop",
                "meta iifname @spoof_ports meta iifname . ip6 saddr != @port_ips6 \
                 ip6 saddr != fe80::/10 ip6 saddr != :: drop",
            ]
        );
        let members = |set: &str| -> Vec<&str> {
            bridge.sets[set]
                .elements
                .keys()
                .map(ElemText::as_str)
                .collect()
        };
        assert_eq!(members(SPOOF_PORTS_SET), ["vn_i-0a1b2c3d"]);
        assert_eq!(
            members(PORT_MACS_SET),
            ["vn_i-0a1b2c3d . d0:0d:0a:1b:2c:3d"]
        );
        assert_eq!(members(PORT_IPS4_SET), ["vn_i-0a1b2c3d . 10.1.0.33"]);
    }

    #[test]
    fn render_is_deterministic_and_diffs_empty_against_itself() {
        let a = render(&example_view(), &RenderSettings::default()).desired;
        let b = render(&example_view(), &RenderSettings::default()).desired;
        assert_eq!(a, b);
        assert!(diff(&a, &b).is_empty());
    }

    #[test]
    fn bad_entities_are_left_out_and_reported_the_rest_renders() {
        let mut view = example_view();
        let mut bad = view.instances[0].clone();
        bad.id = "i-bad".into();
        bad.private_ip = "10.1.0.34".into();
        bad.public_ip = Some("192.0.2.1".into()); // outside the pool
        bad.interface = "vn_i-bad".into();
        bad.mac = "d0:0d:00:00:00:01".into();
        view.instances.push(bad);
        let mut unparsable = view.instances[0].clone();
        unparsable.id = "i-junk".into();
        unparsable.private_ip = "10.1.0.999".into();
        view.instances.push(unparsable);
        view.security_groups[0]
            .ingress
            .as_mut()
            .unwrap()
            .push(Rule {
                cidr: Some("10.0.0.0/8".into()),
                from_port: Some(70000),
                group: None,
                icmp_code: None,
                icmp_type: None,
                protocol: edgenet_model::Protocol::Name("tcp".into()),
                to_port: None,
            });
        view.routes[0].gateway = Some("not-an-ip".into());
        let rendered = render(&view, &RenderSettings::default());
        assert_eq!(
            rendered.left_out,
            [
                "instances[i-bad].public_ip: not inside public_ips: 192.0.2.1",
                "instances[i-junk].private_ip: not an IP address: \"10.1.0.999\"",
                "security_groups[sg-web].ingress[4].from_port: out of range (rule left out)",
                "routes[10.2.0.0/16].gateway: not an address of the destination's family: \"not-an-ip\"",
            ]
        );
        let table = inet(&rendered.desired);
        // Fail closed: the bad instance's IP is mapped to drop.
        assert_eq!(
            table.sets["instances"].elements["10.1.0.34"].as_deref(),
            Some(DROP_VALUE)
        );
        assert!(!table.chains.contains_key("in_i-bad"));
        // The good instance is unaffected.
        assert!(table.chains.contains_key("in_i-0a1b2c3d"));
        assert_eq!(table.chains["sg_sg-web"].rules.len(), 6);
        assert!(rendered.desired.routes.is_empty());
    }

    #[test]
    fn instances_removed_before_render_fail_closed() {
        let view = example_view();
        let mut sanitized = view.clone();
        let removed = vec![sanitized.instances.pop().unwrap()];
        let mut state = render(&sanitized, &RenderSettings::default()).desired;
        let mut other = removed[0].clone();
        other.private_ip = "not an ip".into();
        fail_closed_for(&mut state, &[removed[0].clone(), other]);
        assert_eq!(
            inet(&state).sets["instances"].elements["10.1.0.33"].as_deref(),
            Some(DROP_VALUE)
        );
        // An instance still in the view keeps its jump.
        let mut full = render(&view, &RenderSettings::default()).desired;
        fail_closed_for(&mut full, &removed);
        assert_eq!(
            inet(&full).sets["instances"].elements["10.1.0.33"].as_deref(),
            Some("jump in_i-0a1b2c3d")
        );
    }

    #[test]
    fn hostile_strings_never_reach_the_kernel() {
        let mut view = example_view();
        view.instances[0].interface = "eth0\" ; flush ruleset".into();
        view.instances[0].security_groups = Some(vec!["sg web".into()]);
        view.node.public_interface = "a/b".into();
        let rendered = render(&view, &RenderSettings::default());
        assert_eq!(rendered.left_out.len(), 2, "{:?}", rendered.left_out);
        let table = inet(&rendered.desired);
        assert_eq!(
            table.sets["instances"].elements["10.1.0.33"].as_deref(),
            Some(DROP_VALUE)
        );
    }

    #[test]
    fn ipv6_instances_use_the_v6_maps() {
        let mut view = example_view();
        view.subnets.push(edgenet_model::Subnet {
            id: "subnet-6".into(),
            cidr: "2001:db8:1::/64".into(),
            gateway: Some("2001:db8:1::1".into()),
        });
        view.public_ips.push("2001:db8:ff::/120".into());
        let mut six = view.instances[0].clone();
        six.id = "i-six".into();
        six.subnet = "subnet-6".into();
        six.private_ip = "2001:db8:1::10".into();
        six.public_ip = Some("2001:db8:ff::5".into());
        six.interface = "vn_i-six".into();
        six.mac = "d0:0d:00:00:00:06".into();
        view.instances.push(six);
        let rendered = render(&view, &RenderSettings::default());
        assert!(rendered.left_out.is_empty(), "{:?}", rendered.left_out);
        let table = inet(&rendered.desired);
        assert_eq!(
            table.sets["instances6"].elements["2001:db8:1::10"].as_deref(),
            Some("jump in_i-six")
        );
        assert!(table.sets["dnat6"].elements.contains_key("2001:db8:ff::5"));
        assert!(rendered
            .desired
            .addresses
            .iter()
            .any(|a| a.to_string() == "2001:db8:ff::5/128 dev eth0"));
    }
}
