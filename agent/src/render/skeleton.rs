//! What exists whatever the view holds: base chains, maps, sets and the metadata rule.

use std::net::{IpAddr, Ipv4Addr};

use compact_str::ToCompactString;

use super::names::*;
use super::{family_of_net, insert_chain, number_rules, Renderer};
use crate::state::*;

impl Renderer<'_> {
    /// Chains, sets and maps that exist whatever the view holds.
    pub(super) fn add_skeleton(&mut self) {
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

    pub(super) fn render_metadata(&mut self) {
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
}
