//! Sections of a view: their names, their values and their digests.

use std::cmp::Ordering;
use std::fmt;
use std::sync::Arc;

use serde::de::{DeserializeSeed, Deserializer};
use serde::{Deserialize, Serialize, Serializer};
use sha2::{Digest as _, Sha256};

use crate::addr::sort_numerically;
use crate::canonical::{route_order, to_canonical_vec};
use crate::types::{Instance, Metadata, Node, Route, SecurityGroup, Subnet};
use crate::v2::error::SectionError;

/// A security group id as a section name carries it. Ordered by UTF-16 code
/// units, as RFC 8785 orders the manifest's keys.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct GroupId(Arc<str>);

impl GroupId {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl From<&str> for GroupId {
    fn from(id: &str) -> Self {
        GroupId(Arc::from(id))
    }
}

impl Ord for GroupId {
    fn cmp(&self, other: &Self) -> Ordering {
        utf16_order(&self.0, &other.0)
    }
}

/// RFC 8785 compares keys by UTF-16 code units. UTF-8 bytes compare as code
/// points, which is the same order except between U+E000..=U+FFFF (lead
/// byte 0xEE or 0xEF) and U+10000 and above (lead byte 0xF0..), which
/// UTF-16 writes as surrogates 0xD800.. and so sorts first. The first
/// differing byte says which case it is, so this costs one `memcmp`.
fn utf16_order(a: &str, b: &str) -> Ordering {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    let Some(at) = a.iter().zip(b).position(|(x, y)| x != y) else {
        return a.len().cmp(&b.len());
    };
    let above_bmp = |lead: u8| lead >= 0xF0;
    let top_of_bmp = |lead: u8| lead == 0xEE || lead == 0xEF;
    match (a[at], b[at]) {
        (x, y) if above_bmp(x) && top_of_bmp(y) => Ordering::Less,
        (x, y) if top_of_bmp(x) && above_bmp(y) => Ordering::Greater,
        (x, y) => x.cmp(&y),
    }
}

impl PartialOrd for GroupId {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl fmt::Display for GroupId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

const SECURITY_GROUPS: &str = "security_groups/";
const GROUP_MEMBERS: &str = "group_members/";

/// The name of a section. The variants are declared in the order of their
/// names' text (every group_members name sorts before `instances`, every
/// security_groups name between `schema` and `subnets`), so the derived
/// order is RFC 8785's order of the manifest's keys.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum SectionName {
    GroupMembers(GroupId),
    Instances,
    Metadata,
    Node,
    PublicIps,
    Routes,
    Schema,
    SecurityGroup(GroupId),
    Subnets,
}

impl SectionName {
    /// The sections every view has: a delta may change them, never remove them.
    pub const REQUIRED: [SectionName; 6] = [
        SectionName::Schema,
        SectionName::Node,
        SectionName::PublicIps,
        SectionName::Subnets,
        SectionName::Routes,
        SectionName::Instances,
    ];

    pub fn is_required(&self) -> bool {
        Self::REQUIRED.contains(self)
    }

    /// Appends the name as a JSON string. Valid ids need no escapes, so
    /// the text is copied as it is; any other id goes through the escaper.
    pub(crate) fn write_json(&self, out: &mut Vec<u8>) {
        let (prefix, id) = match self {
            SectionName::GroupMembers(id) => (GROUP_MEMBERS, id.as_str()),
            SectionName::SecurityGroup(id) => (SECURITY_GROUPS, id.as_str()),
            _ => ("", ""),
        };
        let plain = |b: &u8| *b >= 0x20 && *b != b'"' && *b != b'\\';
        if prefix.is_empty() || !id.bytes().all(|b| plain(&b)) {
            serde_json::to_writer(&mut *out, self).expect("writing to a Vec cannot fail");
            return;
        }
        out.push(b'"');
        out.extend_from_slice(prefix.as_bytes());
        out.extend_from_slice(id.as_bytes());
        out.push(b'"');
    }

    pub fn group_members(group: &str) -> Self {
        SectionName::GroupMembers(GroupId::from(group))
    }

    pub fn security_group(group: &str) -> Self {
        SectionName::SecurityGroup(GroupId::from(group))
    }
}

impl fmt::Display for SectionName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SectionName::GroupMembers(id) => write!(f, "{GROUP_MEMBERS}{id}"),
            SectionName::Instances => f.write_str("instances"),
            SectionName::Metadata => f.write_str("metadata"),
            SectionName::Node => f.write_str("node"),
            SectionName::PublicIps => f.write_str("public_ips"),
            SectionName::Routes => f.write_str("routes"),
            SectionName::Schema => f.write_str("schema"),
            SectionName::SecurityGroup(id) => write!(f, "{SECURITY_GROUPS}{id}"),
            SectionName::Subnets => f.write_str("subnets"),
        }
    }
}

impl std::str::FromStr for SectionName {
    type Err = SectionError;

    fn from_str(text: &str) -> Result<Self, SectionError> {
        let group = |prefix: &str| {
            text.strip_prefix(prefix)
                .filter(|id| !id.is_empty())
                .map(GroupId::from)
        };
        let name = match text {
            "instances" => SectionName::Instances,
            "metadata" => SectionName::Metadata,
            "node" => SectionName::Node,
            "public_ips" => SectionName::PublicIps,
            "routes" => SectionName::Routes,
            "schema" => SectionName::Schema,
            "subnets" => SectionName::Subnets,
            _ => match (group(GROUP_MEMBERS), group(SECURITY_GROUPS)) {
                (Some(id), _) => SectionName::GroupMembers(id),
                (_, Some(id)) => SectionName::SecurityGroup(id),
                _ => return Err(SectionError::UnknownSection(text.to_owned())),
            },
        };
        Ok(name)
    }
}

impl Serialize for SectionName {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for SectionName {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// The lowercase hex SHA-256 of a section value's RFC 8785 JSON.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SectionDigest(pub [u8; 32]);

impl SectionDigest {
    pub fn of_json(canonical_json: &[u8]) -> Self {
        SectionDigest(Sha256::digest(canonical_json).into())
    }
}

impl fmt::Display for SectionDigest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

impl fmt::Debug for SectionDigest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SectionDigest({self})")
    }
}

/// What a section holds, typed as the view's part it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SectionValue {
    GroupMembers(Vec<String>),
    Instances(Vec<Instance>),
    Metadata(Metadata),
    Node(Node),
    PublicIps(Vec<String>),
    Routes(Vec<Route>),
    Schema(i64),
    SecurityGroup(SecurityGroup),
    Subnets(Vec<Subnet>),
}

impl SectionValue {
    /// Puts the value in the view's canonical order (docs/model.md),
    /// with the rules `NodeView::canonicalize` uses. A list already in
    /// order (as a server sends it) is found so in one pass.
    fn canonicalize(&mut self) {
        match self {
            SectionValue::GroupMembers(ips) | SectionValue::PublicIps(ips) => sort_numerically(ips),
            SectionValue::Instances(instances) => {
                instances.sort_by(|a, b| a.id.cmp(&b.id));
                for groups in instances
                    .iter_mut()
                    .filter_map(|i| i.security_groups.as_mut())
                {
                    groups.sort();
                }
            }
            SectionValue::Routes(routes) => routes.sort_by(route_order),
            SectionValue::Subnets(subnets) => subnets.sort_by(|a, b| a.id.cmp(&b.id)),
            SectionValue::Metadata(_)
            | SectionValue::Node(_)
            | SectionValue::Schema(_)
            | SectionValue::SecurityGroup(_) => {}
        }
    }

    /// Whether this value can be the section `name`: the same part, and
    /// for a group the same id.
    pub fn fits(&self, name: &SectionName) -> bool {
        match (name, self) {
            (SectionName::SecurityGroup(id), SectionValue::SecurityGroup(group)) => {
                id.as_str() == group.id
            }
            (SectionName::GroupMembers(_), SectionValue::GroupMembers(_))
            | (SectionName::Instances, SectionValue::Instances(_))
            | (SectionName::Metadata, SectionValue::Metadata(_))
            | (SectionName::Node, SectionValue::Node(_))
            | (SectionName::PublicIps, SectionValue::PublicIps(_))
            | (SectionName::Routes, SectionValue::Routes(_))
            | (SectionName::Schema, SectionValue::Schema(_))
            | (SectionName::Subnets, SectionValue::Subnets(_)) => true,
            _ => false,
        }
    }
}

impl Serialize for SectionValue {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            SectionValue::GroupMembers(ips) | SectionValue::PublicIps(ips) => {
                ips.serialize(serializer)
            }
            SectionValue::Instances(instances) => instances.serialize(serializer),
            SectionValue::Metadata(metadata) => metadata.serialize(serializer),
            SectionValue::Node(node) => node.serialize(serializer),
            SectionValue::Routes(routes) => routes.serialize(serializer),
            SectionValue::Schema(schema) => schema.serialize(serializer),
            SectionValue::SecurityGroup(group) => group.serialize(serializer),
            SectionValue::Subnets(subnets) => subnets.serialize(serializer),
        }
    }
}

/// Reads the value of the section `name` from the wire, typed by the name.
pub(crate) struct ValueFor<'a>(pub &'a SectionName);

impl<'de> DeserializeSeed<'de> for ValueFor<'_> {
    type Value = SectionValue;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<SectionValue, D::Error> {
        Ok(match self.0 {
            SectionName::GroupMembers(_) => {
                SectionValue::GroupMembers(Deserialize::deserialize(d)?)
            }
            SectionName::Instances => SectionValue::Instances(Deserialize::deserialize(d)?),
            SectionName::Metadata => SectionValue::Metadata(Deserialize::deserialize(d)?),
            SectionName::Node => SectionValue::Node(Deserialize::deserialize(d)?),
            SectionName::PublicIps => SectionValue::PublicIps(Deserialize::deserialize(d)?),
            SectionName::Routes => SectionValue::Routes(Deserialize::deserialize(d)?),
            SectionName::Schema => SectionValue::Schema(Deserialize::deserialize(d)?),
            SectionName::SecurityGroup(_) => {
                SectionValue::SecurityGroup(Deserialize::deserialize(d)?)
            }
            SectionName::Subnets => SectionValue::Subnets(Deserialize::deserialize(d)?),
        })
    }
}

/// A section value in canonical order, its RFC 8785 JSON and its digest.
/// Cloning shares all three: one section can sit in many views and deltas,
/// hashed once.
#[derive(Clone)]
pub struct Section(Arc<SectionData>);

struct SectionData {
    value: SectionValue,
    json: Box<[u8]>,
    digest: SectionDigest,
}

impl Section {
    /// Canonicalises `value`, serialises it once and hashes it once.
    pub fn new(mut value: SectionValue) -> Self {
        value.canonicalize();
        let json = to_canonical_vec(&value).into_boxed_slice();
        let digest = SectionDigest::of_json(&json);
        Section(Arc::new(SectionData {
            value,
            json,
            digest,
        }))
    }

    pub fn value(&self) -> &SectionValue {
        &self.0.value
    }

    /// The RFC 8785 JSON the digest is taken of.
    pub fn json(&self) -> &[u8] {
        &self.0.json
    }

    pub fn digest(&self) -> SectionDigest {
        self.0.digest
    }

    /// Whether both are the same shared section (then the digests are equal
    /// without comparing them).
    pub fn ptr_eq(&self, other: &Section) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }

    /// Equal content, known from the digests.
    pub fn same_content(&self, other: &Section) -> bool {
        self.ptr_eq(other) || self.digest() == other.digest()
    }

    pub fn members(&self) -> Option<&[String]> {
        match self.value() {
            SectionValue::GroupMembers(ips) => Some(ips),
            _ => None,
        }
    }
}

impl fmt::Debug for Section {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Section")
            .field("digest", &self.digest())
            .field("value", self.value())
            .finish()
    }
}

impl PartialEq for Section {
    fn eq(&self, other: &Self) -> bool {
        self.same_content(other)
    }
}

impl Eq for Section {}

impl Serialize for Section {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.value().serialize(serializer)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn group_ids_sort_by_utf16_code_units() {
        let ids = [
            "a",
            "ab",
            "b",
            "é",
            "\u{d7ff}",
            "\u{e000}",
            "\u{ff01}",
            "\u{10000}",
            "\u{1f600}",
        ];
        for a in ids {
            for b in ids {
                let utf16 = a.encode_utf16().cmp(b.encode_utf16());
                assert_eq!(
                    GroupId::from(a).cmp(&GroupId::from(b)),
                    utf16,
                    "{a:?} {b:?}"
                );
            }
        }
    }

    #[test]
    fn names_are_written_as_the_escaper_writes_them() {
        for id in [
            "sg-web",
            "a\"b",
            "back\\slash",
            "tab\tctl\u{1}",
            "é€😀",
            "a/b",
        ] {
            for name in [
                SectionName::group_members(id),
                SectionName::security_group(id),
            ] {
                let mut fast = Vec::new();
                name.write_json(&mut fast);
                assert_eq!(
                    fast,
                    serde_json::to_vec(&name.to_string()).unwrap(),
                    "{id:?}"
                );
            }
        }
        let mut plain = Vec::new();
        SectionName::PublicIps.write_json(&mut plain);
        assert_eq!(plain, b"\"public_ips\"");
    }
}
