//! Security groups: each used group's `sg_<g>` chain and its rules' member sets.

use std::collections::BTreeSet;
use std::net::IpAddr;

use compact_str::ToCompactString;
use edgenet_model::validate::is_valid_id;
use edgenet_model::{IpProtocol, Rule};

use super::names::*;
use super::{family_of_net, insert_chain, parse_net_or_addr, Renderer};
use crate::state::*;

impl<'a> Renderer<'a> {
    pub(super) fn render_security_groups(&mut self, used: &BTreeSet<&'a str>) {
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
                if !is_valid_id(group) {
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
}

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
