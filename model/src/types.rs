//! The cloud model and the node view, as docs/model.md gives them.
//!
//! Addresses, CIDRs and numbers are kept exactly as written: the canonical
//! form (and so the state id) is defined over the text of the model, and a
//! bad value must reach validation, which names the entity and field, rather
//! than stop the parser at the first one.
//!
//! Fields are declared in the byte order of their JSON names. `serde_json`
//! writes struct fields in declaration order, so the compact serialisation of
//! these types is already RFC 8785 key order; `canonical::tests` proves it.

use std::collections::BTreeMap;

use serde::{Deserialize, Deserializer, Serialize};

/// The only schema version this crate understands.
pub const SCHEMA_VERSION: i64 = 1;

/// The ground truth the describe endpoint serves from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CloudModel {
    #[serde(default)]
    pub instances: Vec<Instance>,
    #[serde(
        default,
        deserialize_with = "present_not_null",
        skip_serializing_if = "Option::is_none"
    )]
    pub metadata: Option<Metadata>,
    #[serde(default)]
    pub nodes: Vec<Node>,
    #[serde(default)]
    pub public_ips: Vec<String>,
    #[serde(default)]
    pub routes: Vec<Route>,
    pub schema: i64,
    #[serde(default)]
    pub security_groups: Vec<SecurityGroup>,
    #[serde(default)]
    pub subnets: Vec<Subnet>,
}

/// The metadata redirect: `ip:port` as instances see it, DNAT-ed to
/// `target_ip:target_port`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Metadata {
    pub ip: String,
    pub port: i64,
    pub target_ip: String,
    pub target_port: i64,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Subnet {
    pub cidr: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway: Option<String>,
    pub id: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Node {
    pub bridge: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway_on_bridge: Option<bool>,
    pub id: String,
    pub public_interface: String,
}

impl Node {
    /// Absent means no gateway address is put on the bridge.
    pub fn gateway_on_bridge(&self) -> bool {
        self.gateway_on_bridge.unwrap_or(false)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Instance {
    pub id: String,
    pub interface: String,
    pub mac: String,
    pub node: String,
    pub private_ip: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub public_ip: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub security_groups: Option<Vec<String>>,
    pub subnet: String,
}

impl Instance {
    pub fn security_groups(&self) -> &[String] {
        self.security_groups.as_deref().unwrap_or(&[])
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SecurityGroup {
    pub id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ingress: Option<Vec<Rule>>,
}

impl SecurityGroup {
    pub fn ingress(&self) -> &[Rule] {
        self.ingress.as_deref().unwrap_or(&[])
    }
}

/// One ingress rule. Exactly one of `cidr` and `group` is its source.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rule {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cidr: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from_port: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub icmp_code: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub icmp_type: Option<i64>,
    pub protocol: Protocol,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to_port: Option<i64>,
}

/// `tcp`, `udp`, `icmp`, `all`, or an IP protocol number, as written.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Protocol {
    Number(i64),
    Name(String),
}

/// What a rule's protocol means once validated.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum IpProtocol {
    All,
    Tcp,
    Udp,
    Icmp,
    Other(u8),
}

impl IpProtocol {
    pub const TCP: u8 = 6;
    pub const UDP: u8 = 17;
    pub const ICMP: u8 = 1;

    /// Numbers that have a name are folded into it, so `6` and `"tcp"`
    /// render the same rule.
    pub fn from_number(number: u8) -> Self {
        match number {
            Self::TCP => IpProtocol::Tcp,
            Self::UDP => IpProtocol::Udp,
            Self::ICMP => IpProtocol::Icmp,
            other => IpProtocol::Other(other),
        }
    }

    pub fn has_ports(self) -> bool {
        matches!(self, IpProtocol::Tcp | IpProtocol::Udp)
    }
}

impl Protocol {
    /// `None` when the text is not a protocol this model allows.
    pub fn parse(&self) -> Option<IpProtocol> {
        match self {
            Protocol::Number(n) => u8::try_from(*n).ok().map(IpProtocol::from_number),
            Protocol::Name(name) => match name.as_str() {
                "tcp" => Some(IpProtocol::Tcp),
                "udp" => Some(IpProtocol::Udp),
                "icmp" => Some(IpProtocol::Icmp),
                "all" => Some(IpProtocol::All),
                _ => None,
            },
        }
    }
}

impl std::fmt::Display for Protocol {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Protocol::Number(n) => write!(f, "{n}"),
            Protocol::Name(name) => f.write_str(name),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Route {
    pub destination: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metric: Option<i64>,
    /// Absent: the route is for every node.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
}

impl Route {
    pub fn applies_to(&self, node_id: &str) -> bool {
        self.node.as_deref().is_none_or(|n| n == node_id)
    }
}

/// What one node needs, and nothing that other nodes change without
/// affecting it. This is `View` in a `DescribeNetworkModel` answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeView {
    pub group_members: BTreeMap<String, Vec<String>>,
    pub instances: Vec<Instance>,
    #[serde(
        default,
        deserialize_with = "present_not_null",
        skip_serializing_if = "Option::is_none"
    )]
    pub metadata: Option<Metadata>,
    pub node: Node,
    pub public_ips: Vec<String>,
    pub routes: Vec<Route>,
    pub schema: i64,
    pub security_groups: Vec<SecurityGroup>,
    pub subnets: Vec<Subnet>,
}

/// An optional field that, when present, must not be `null`: docs/model.md says an
/// explicit `"metadata": null` is invalid while an absent one is fine.
fn present_not_null<'de, D, T>(deserializer: D) -> Result<Option<T>, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de>,
{
    T::deserialize(deserializer).map(Some)
}
