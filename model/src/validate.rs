//! Validation of a cloud model or a node view, collecting every error.
//!
//! One checker serves both documents: a view is checked like a model with a
//! single node, whose group rules may name any group in `group_members`.

use std::collections::BTreeMap;

use rustc_hash::{FxHashMap as HashMap, FxHashSet as HashSet};
use std::net::IpAddr;

use crate::addr::{parse_ip, parse_mac, parse_prefix, Prefix};
use crate::error::{Entity, ValidationError, ValidationErrors};
use crate::types::*;

/// The parts of a model or a view that validation reads.
pub(crate) struct Document<'a> {
    pub schema: i64,
    pub metadata: Option<&'a Metadata>,
    pub public_ips: &'a [String],
    pub subnets: &'a [Subnet],
    pub nodes: &'a [Node],
    pub instances: &'a [Instance],
    pub security_groups: &'a [SecurityGroup],
    pub routes: &'a [Route],
    /// Only views carry members; in a model, rules may name any group.
    pub group_members: Option<&'a BTreeMap<String, Vec<String>>>,
}

impl<'a> Document<'a> {
    pub fn of_model(model: &'a CloudModel) -> Self {
        Document {
            schema: model.schema,
            metadata: model.metadata.as_ref(),
            public_ips: &model.public_ips,
            subnets: &model.subnets,
            nodes: &model.nodes,
            instances: &model.instances,
            security_groups: &model.security_groups,
            routes: &model.routes,
            group_members: None,
        }
    }

    pub fn of_view(view: &'a NodeView) -> Self {
        Document {
            schema: view.schema,
            metadata: view.metadata.as_ref(),
            public_ips: &view.public_ips,
            subnets: &view.subnets,
            nodes: std::slice::from_ref(&view.node),
            instances: &view.instances,
            security_groups: &view.security_groups,
            routes: &view.routes,
            group_members: Some(&view.group_members),
        }
    }
}

impl CloudModel {
    /// Checks everything docs/model.md lists and returns every error found.
    pub fn validate(&self) -> Result<(), ValidationErrors> {
        let errors = check(&Document::of_model(self));
        if errors.is_empty() {
            Ok(())
        } else {
            Err(ValidationErrors(errors))
        }
    }
}

pub(crate) fn check(doc: &Document<'_>) -> Vec<ValidationError> {
    let mut checker = Checker::new(doc);
    checker.schema();
    checker.metadata();
    checker.public_ips();
    checker.subnets();
    checker.nodes();
    checker.security_groups();
    checker.instances();
    checker.routes();
    checker.group_members();
    checker.errors
}

struct Checker<'d, 'a> {
    doc: &'d Document<'a>,
    errors: Vec<ValidationError>,
    pool: Vec<Prefix>,
    subnets: HashMap<&'a str, Prefix>,
    nodes: HashSet<&'a str>,
    groups: HashSet<&'a str>,
}

const ID_RULE: &str = "must be 1 to 64 of A-Z a-z 0-9 . _ -";

/// The id rule of every entity (docs/model.md): `[A-Za-z0-9._-]{1,64}`.
pub fn is_valid_id(id: &str) -> bool {
    (1..=64).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

const INTERFACE_RULE: &str = r#"1 to 15 visible ASCII characters, none of / : " \, not . or .."#;

/// Linux interface names: IFNAMSIZ less the NUL, nothing the kernel
/// refuses in a name (`/`, `:`, whitespace, `.`, `..`), and only visible
/// ASCII without `"` or `\`, so that a name written into nft's quoted
/// strings can neither end the string nor escape out of it.
pub fn is_valid_interface_name(name: &str) -> bool {
    (1..=15).contains(&name.len())
        && name != "."
        && name != ".."
        && name
            .bytes()
            .all(|b| b.is_ascii_graphic() && !matches!(b, b'/' | b':' | b'"' | b'\\'))
}

fn family(ip: IpAddr) -> &'static str {
    if ip.is_ipv4() {
        "IPv4"
    } else {
        "IPv6"
    }
}

/// `instances[i-1]` when the id is usable, `instances[#3]` when it is not.
fn entity_path(kind: &str, id: &str, position: usize) -> String {
    if id.is_empty() {
        format!("{kind}[#{position}]")
    } else {
        format!("{kind}[{id}]")
    }
}

impl<'d, 'a> Checker<'d, 'a> {
    fn new(doc: &'d Document<'a>) -> Self {
        Checker {
            doc,
            errors: Vec::new(),
            pool: Vec::new(),
            subnets: HashMap::default(),
            nodes: HashSet::default(),
            groups: HashSet::default(),
        }
    }

    fn push(&mut self, entity: Entity, path: impl Into<String>, message: impl Into<String>) {
        self.errors.push(ValidationError {
            path: path.into(),
            message: message.into(),
            entity,
        });
    }

    fn schema(&mut self) {
        if self.doc.schema != SCHEMA_VERSION {
            let message = format!(
                "unsupported schema {}, expected {SCHEMA_VERSION}",
                self.doc.schema
            );
            self.push(Entity::Document, "schema", message);
        }
    }

    fn metadata(&mut self) {
        let Some(metadata) = self.doc.metadata else {
            return;
        };
        let ip = self.address(Entity::Metadata, "metadata.ip", &metadata.ip);
        self.port(Entity::Metadata, "metadata.port", metadata.port, 1);
        let target = self.address(Entity::Metadata, "metadata.target_ip", &metadata.target_ip);
        self.port(
            Entity::Metadata,
            "metadata.target_port",
            metadata.target_port,
            1,
        );
        if let (Some(ip), Some(target)) = (ip, target) {
            if ip.is_ipv4() != target.is_ipv4() {
                let message = format!(
                    "{} address for an {} metadata.ip",
                    family(target),
                    family(ip)
                );
                self.push(Entity::Metadata, "metadata.target_ip", message);
            }
        }
    }

    fn address(&mut self, entity: Entity, path: &str, text: &str) -> Option<IpAddr> {
        let parsed = parse_ip(text);
        if parsed.is_none() {
            self.push(entity, path, format!("{text:?} is not an IP address"));
        }
        parsed
    }

    fn prefix(&mut self, entity: Entity, path: &str, text: &str) -> Option<Prefix> {
        match parse_prefix(text) {
            Ok(prefix) => Some(prefix),
            Err(error) => {
                self.push(entity, path, format!("{text:?}: {error}"));
                None
            }
        }
    }

    fn port(&mut self, entity: Entity, path: &str, port: i64, lowest: i64) {
        if !(lowest..=65535).contains(&port) {
            self.push(
                entity,
                path,
                format!("{port} out of range {lowest}..=65535"),
            );
        }
    }

    fn id(&mut self, entity: Entity, path: &str, id: &str) {
        if !is_valid_id(id) {
            self.push(entity, format!("{path}.id"), format!("{id:?} {ID_RULE}"));
        }
    }

    fn interface(&mut self, entity: Entity, path: String, name: &str) {
        if !is_valid_interface_name(name) {
            let message = format!("{name:?} is not a Linux interface name ({INTERFACE_RULE})");
            self.push(entity, path, message);
        }
    }

    fn public_ips(&mut self) {
        let mut seen: Vec<Prefix> = Vec::new();
        for (position, text) in self.doc.public_ips.iter().enumerate() {
            let path = format!("public_ips[{position}]");
            let Some(prefix) = self.prefix(Entity::PublicIp(position), &path, text) else {
                continue;
            };
            if let Some(other) = seen.iter().find(|other| other.overlaps(&prefix)) {
                let message = format!("{text} overlaps {other}, already in the pool");
                self.push(Entity::PublicIp(position), path, message);
                continue;
            }
            seen.push(prefix);
        }
        self.pool = seen;
    }

    fn subnets(&mut self) {
        for (position, subnet) in self.doc.subnets.iter().enumerate() {
            let entity = Entity::Subnet(position);
            let path = entity_path("subnets", &subnet.id, position);
            self.id(entity, &path, &subnet.id);
            let cidr = self.prefix(entity, &format!("{path}.cidr"), &subnet.cidr);
            if let (Some(cidr), Some(gateway)) = (cidr, &subnet.gateway) {
                self.subnet_gateway(entity, &path, cidr, gateway);
            }
            let Some(cidr) = cidr else { continue };
            if self.subnets.contains_key(subnet.id.as_str()) {
                self.push(entity, format!("{path}.id"), "duplicate subnet id");
                continue;
            }
            let overlapping = self.subnets.iter().find(|(_, other)| other.overlaps(&cidr));
            if let Some((other_id, other)) = overlapping {
                let message = format!("{cidr} overlaps subnet {other_id} {other}");
                self.push(entity, format!("{path}.cidr"), message);
                continue;
            }
            self.subnets.insert(subnet.id.as_str(), cidr);
        }
    }

    fn subnet_gateway(&mut self, entity: Entity, path: &str, cidr: Prefix, gateway: &str) {
        let field = format!("{path}.gateway");
        let Some(ip) = self.address(entity, &field, gateway) else {
            return;
        };
        if ip.is_ipv4() != cidr.is_ipv4() {
            let message = format!(
                "{} address in an {} subnet",
                family(ip),
                family(cidr.addr())
            );
            self.push(entity, field, message);
        } else if !cidr.contains(ip) {
            self.push(entity, field, format!("{gateway} is not inside {cidr}"));
        } else if ip == cidr.addr() && cidr.prefix_len() < cidr_host_len(cidr) {
            self.push(
                entity,
                field,
                format!("{gateway} is the network address of {cidr}"),
            );
        }
    }

    fn nodes(&mut self) {
        for (position, node) in self.doc.nodes.iter().enumerate() {
            let entity = Entity::Node(position);
            let path = entity_path("nodes", &node.id, position);
            self.id(entity, &path, &node.id);
            self.interface(entity, format!("{path}.bridge"), &node.bridge);
            self.interface(
                entity,
                format!("{path}.public_interface"),
                &node.public_interface,
            );
            if !self.nodes.insert(node.id.as_str()) {
                self.push(entity, format!("{path}.id"), "duplicate node id");
            }
        }
    }

    fn security_groups(&mut self) {
        let known: HashSet<&str> = match self.doc.group_members {
            Some(members) => members.keys().map(String::as_str).collect(),
            None => self
                .doc
                .security_groups
                .iter()
                .map(|g| g.id.as_str())
                .collect(),
        };
        for (position, group) in self.doc.security_groups.iter().enumerate() {
            let entity = Entity::SecurityGroup(position);
            let path = entity_path("security_groups", &group.id, position);
            self.id(entity, &path, &group.id);
            if !self.groups.insert(group.id.as_str()) {
                self.push(entity, format!("{path}.id"), "duplicate security group id");
            }
            for (rule_position, rule) in group.ingress().iter().enumerate() {
                let rule_path = format!("{path}.ingress[{rule_position}]");
                let entity = Entity::Rule {
                    group: position,
                    rule: rule_position,
                };
                self.rule(entity, &rule_path, rule, &known);
            }
        }
    }

    fn rule(&mut self, entity: Entity, path: &str, rule: &Rule, known_groups: &HashSet<&str>) {
        let protocol = rule.protocol.parse();
        if protocol.is_none() {
            let message = format!(
                "{:?} is not tcp, udp, icmp, all or a protocol number 0..=255",
                rule.protocol.to_string()
            );
            self.push(entity, format!("{path}.protocol"), message);
        }
        self.rule_ports(entity, path, rule, protocol);
        self.rule_icmp(entity, path, rule, protocol);
        match (&rule.cidr, &rule.group) {
            (Some(_), Some(_)) => self.push(
                entity,
                path,
                "has both cidr and group; a rule has exactly one source",
            ),
            (None, None) => self.push(
                entity,
                path,
                "has neither cidr nor group; a rule has exactly one source",
            ),
            (Some(cidr), None) => {
                let prefix = self.prefix(entity, &format!("{path}.cidr"), cidr);
                if let (Some(prefix), Some(IpProtocol::Icmp)) = (prefix, protocol) {
                    if !prefix.is_ipv4() {
                        let message = "icmp rule with an IPv6 cidr (ICMPv6 is protocol 58)";
                        self.push(entity, format!("{path}.cidr"), message);
                    }
                }
            }
            (None, Some(group)) => {
                if !known_groups.contains(group.as_str()) {
                    self.push(
                        entity,
                        format!("{path}.group"),
                        format!("unknown security group {group}"),
                    );
                }
            }
        }
    }

    fn rule_ports(
        &mut self,
        entity: Entity,
        path: &str,
        rule: &Rule,
        protocol: Option<IpProtocol>,
    ) {
        let has_ports = rule.from_port.is_some() || rule.to_port.is_some();
        if !has_ports {
            return;
        }
        if protocol.is_some_and(|p| !p.has_ports()) {
            let message = format!(
                "ports are only allowed with tcp or udp, not {}",
                rule.protocol
            );
            self.push(entity, format!("{path}.from_port"), message);
            return;
        }
        let Some(from) = rule.from_port else {
            self.push(
                entity,
                format!("{path}.from_port"),
                "missing: to_port is given without from_port",
            );
            return;
        };
        self.port(entity, &format!("{path}.from_port"), from, 0);
        if let Some(to) = rule.to_port {
            self.port(entity, &format!("{path}.to_port"), to, 0);
            if to < from {
                self.push(
                    entity,
                    format!("{path}.to_port"),
                    format!("{to} is below from_port {from}"),
                );
            }
        }
    }

    fn rule_icmp(&mut self, entity: Entity, path: &str, rule: &Rule, protocol: Option<IpProtocol>) {
        let fields = [("icmp_type", rule.icmp_type), ("icmp_code", rule.icmp_code)];
        for (field, value) in fields {
            let Some(value) = value else { continue };
            if protocol.is_some_and(|p| p != IpProtocol::Icmp) {
                let message = format!("only allowed with icmp, not {}", rule.protocol);
                self.push(entity, format!("{path}.{field}"), message);
            } else if !(0..=255).contains(&value) {
                self.push(
                    entity,
                    format!("{path}.{field}"),
                    format!("{value} out of range 0..=255"),
                );
            }
        }
        if rule.icmp_code.is_some() && rule.icmp_type.is_none() {
            self.push(
                entity,
                format!("{path}.icmp_code"),
                "given without icmp_type",
            );
        }
    }
}

fn cidr_host_len(cidr: Prefix) -> u8 {
    if cidr.is_ipv4() {
        32
    } else {
        128
    }
}

/// A route's node (absent: every node) and its position.
type RouteClaim<'a> = (Option<&'a str>, usize);

/// Per-node and cloud-wide uniqueness of what instances claim.
#[derive(Default)]
struct Claims<'a> {
    ids: HashMap<&'a str, ()>,
    private_ips: HashMap<IpAddr, &'a str>,
    public_ips: HashMap<IpAddr, &'a str>,
    macs: HashMap<[u8; 6], &'a str>,
    interfaces: HashMap<(&'a str, &'a str), &'a str>,
}

impl<'d, 'a> Checker<'d, 'a> {
    fn instances(&mut self) {
        let mut claims = Claims::default();
        for (position, instance) in self.doc.instances.iter().enumerate() {
            self.instance(position, instance, &mut claims);
        }
    }

    fn instance(&mut self, position: usize, instance: &'a Instance, claims: &mut Claims<'a>) {
        let entity = Entity::Instance(position);
        let path = entity_path("instances", &instance.id, position);
        self.id(entity, &path, &instance.id);
        if claims.ids.insert(instance.id.as_str(), ()).is_some() {
            self.push(entity, format!("{path}.id"), "duplicate instance id");
        }
        if !self.nodes.contains(instance.node.as_str()) {
            self.push(
                entity,
                format!("{path}.node"),
                format!("unknown node {}", instance.node),
            );
        }
        self.instance_interface(entity, &path, instance, claims);
        self.instance_mac(entity, &path, instance, claims);
        self.instance_private_ip(entity, &path, instance, claims);
        self.instance_public_ip(entity, &path, instance, claims);
        self.instance_groups(entity, &path, instance);
    }

    fn instance_interface(
        &mut self,
        entity: Entity,
        path: &str,
        instance: &'a Instance,
        claims: &mut Claims<'a>,
    ) {
        let field = format!("{path}.interface");
        if !is_valid_interface_name(&instance.interface) {
            self.interface(entity, field, &instance.interface);
            return;
        }
        let key = (instance.node.as_str(), instance.interface.as_str());
        if let Some(other) = claims.interfaces.insert(key, &instance.id) {
            let message = format!(
                "{} is also the interface of instances[{other}] on node {}",
                instance.interface, instance.node
            );
            self.push(entity, field, message);
        }
    }

    fn instance_mac(
        &mut self,
        entity: Entity,
        path: &str,
        instance: &'a Instance,
        claims: &mut Claims<'a>,
    ) {
        let field = format!("{path}.mac");
        match parse_mac(&instance.mac) {
            Err(why) => self.push(entity, field, format!("{:?}: {why}", instance.mac)),
            Ok(mac) => {
                if let Some(other) = claims.macs.insert(mac, &instance.id) {
                    self.push(
                        entity,
                        field,
                        format!("{} is also the mac of instances[{other}]", instance.mac),
                    );
                }
            }
        }
    }

    fn instance_private_ip(
        &mut self,
        entity: Entity,
        path: &str,
        instance: &'a Instance,
        claims: &mut Claims<'a>,
    ) {
        let field = format!("{path}.private_ip");
        let subnet = self.subnets.get(instance.subnet.as_str()).copied();
        if subnet.is_none() {
            self.push(
                entity,
                format!("{path}.subnet"),
                format!("unknown subnet {}", instance.subnet),
            );
        }
        let Some(ip) = self.address(entity, &field, &instance.private_ip) else {
            return;
        };
        if let Some(subnet) = subnet {
            if ip.is_ipv4() != subnet.is_ipv4() {
                let message = format!(
                    "{} address in {} subnet {} {subnet}",
                    family(ip),
                    family(subnet.addr()),
                    instance.subnet
                );
                self.push(entity, field.clone(), message);
            } else if !subnet.contains(ip) {
                self.push(
                    entity,
                    field.clone(),
                    format!("not inside subnet {} {subnet}", instance.subnet),
                );
            }
        }
        if let Some(other) = claims.private_ips.insert(ip, &instance.id) {
            self.push(
                entity,
                field,
                format!("{ip} is also the private_ip of instances[{other}]"),
            );
        }
    }

    fn instance_public_ip(
        &mut self,
        entity: Entity,
        path: &str,
        instance: &'a Instance,
        claims: &mut Claims<'a>,
    ) {
        let Some(text) = &instance.public_ip else {
            return;
        };
        let field = format!("{path}.public_ip");
        let Some(ip) = self.address(entity, &field, text) else {
            return;
        };
        if !self.pool.iter().any(|pool| pool.contains(ip)) {
            self.push(
                entity,
                field.clone(),
                format!("{ip} is not inside public_ips"),
            );
        }
        if let Some(private) = parse_ip(&instance.private_ip) {
            if private.is_ipv4() != ip.is_ipv4() {
                let message = format!(
                    "{} address for an {} private_ip",
                    family(ip),
                    family(private)
                );
                self.push(entity, field.clone(), message);
            }
        }
        if let Some(other) = claims.public_ips.insert(ip, &instance.id) {
            self.push(
                entity,
                field,
                format!("{ip} is also the public_ip of instances[{other}]"),
            );
        }
    }

    fn instance_groups(&mut self, entity: Entity, path: &str, instance: &Instance) {
        let mut seen = HashSet::default();
        for (position, group) in instance.security_groups().iter().enumerate() {
            let field = format!("{path}.security_groups[{position}]");
            if !self.groups.contains(group.as_str()) {
                self.push(entity, field, format!("unknown security group {group}"));
            } else if !seen.insert(group.as_str()) {
                self.push(entity, field, format!("{group} is listed twice"));
            }
        }
    }

    fn routes(&mut self) {
        let mut seen: HashMap<(Prefix, Option<i64>), Vec<RouteClaim>> = HashMap::default();
        for (position, route) in self.doc.routes.iter().enumerate() {
            let Some(destination) = self.route(position, route) else {
                continue;
            };
            let claimed = seen.entry((destination, route.metric)).or_default();
            let clash = claimed.iter().find(|(node, _)| {
                node.is_none() || route.node.is_none() || *node == route.node.as_deref()
            });
            if let Some((_, other)) = clash {
                let message = format!(
                    "{} with the same metric is also routes[{other}]",
                    route.destination
                );
                self.push(
                    Entity::Route(position),
                    format!("routes[{position}].destination"),
                    message,
                );
                continue;
            }
            claimed.push((route.node.as_deref(), position));
        }
    }

    fn route(&mut self, position: usize, route: &Route) -> Option<Prefix> {
        let entity = Entity::Route(position);
        let path = format!("routes[{position}]");
        if let Some(node) = &route.node {
            if !self.nodes.contains(node.as_str()) {
                self.push(
                    entity,
                    format!("{path}.node"),
                    format!("unknown node {node}"),
                );
            }
        }
        let destination = self.prefix(entity, &format!("{path}.destination"), &route.destination);
        if let Some(gateway) = &route.gateway {
            let field = format!("{path}.gateway");
            let ip = self.address(entity, &field, gateway);
            if let (Some(ip), Some(destination)) = (ip, destination) {
                if ip.is_ipv4() != destination.is_ipv4() {
                    let message = format!(
                        "{} gateway for an {} destination",
                        family(ip),
                        family(destination.addr())
                    );
                    self.push(entity, field, message);
                }
            }
        }
        if let Some(device) = &route.device {
            self.interface(entity, format!("{path}.device"), device);
        }
        if route.gateway.is_none() && route.device.is_none() {
            self.push(entity, path.clone(), "needs a gateway or a device");
        }
        if let Some(metric) = route.metric {
            if !(0..=i64::from(u32::MAX)).contains(&metric) {
                self.push(
                    entity,
                    format!("{path}.metric"),
                    format!("{metric} out of range 0..=4294967295"),
                );
            }
        }
        destination
    }

    fn group_members(&mut self) {
        let Some(members) = self.doc.group_members else {
            return;
        };
        for (group_position, (group, ips)) in members.iter().enumerate() {
            let mut seen = HashSet::default();
            for (position, text) in ips.iter().enumerate() {
                let entity = Entity::GroupMember {
                    group: group_position,
                    member: position,
                };
                let path = format!("group_members[{group}][{position}]");
                if let Some(ip) = self.address(entity, &path, text) {
                    if !seen.insert(ip) {
                        self.push(entity, path, format!("{ip} is listed twice"));
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interface_names_the_kernel_takes_are_valid() {
        for name in [
            "eth0",
            "br0",
            "vn_i-0a1b2c3d",
            "a",
            "eth0.100",
            "x'y",
            "15-bytes-exact_",
        ] {
            assert!(is_valid_interface_name(name), "{name:?}");
        }
    }

    #[test]
    fn interface_names_the_kernel_refuses_are_invalid() {
        for name in [
            "",
            ".",
            "..",
            "a/b",
            "a:b",
            "a b",
            "a\tb",
            "sixteen-bytes-ab",
        ] {
            assert!(!is_valid_interface_name(name), "{name:?}");
        }
    }

    /// The kernel takes these, but each would end or escape a quoted
    /// string in nft's input.
    #[test]
    fn quotes_backslashes_and_control_characters_are_refused() {
        for name in [
            "eth0\"",
            "\"; flush",
            "a\\b",
            "tail\\",
            "a\u{0}b",
            "a\u{7}b",
            "a\nb",
            "a\rb",
            "a\u{1b}[0m",
            "a\u{7f}b",
        ] {
            assert!(!is_valid_interface_name(name), "{name:?}");
        }
    }

    #[test]
    fn interface_names_are_ascii() {
        assert!(!is_valid_interface_name("é"));
        assert!(!is_valid_interface_name("eth\u{a0}0"));
    }

    #[test]
    fn ids_are_1_to_64_of_the_id_alphabet() {
        assert!(is_valid_id("i-0a1b2c3d"));
        assert!(is_valid_id("sg_web.v2"));
        assert!(is_valid_id(&"a".repeat(64)));
        for id in ["", "sg web", "a/b", "a\"b", "é", &"a".repeat(65)] {
            assert!(!is_valid_id(id), "{id:?}");
        }
    }
}
