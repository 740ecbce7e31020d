//! Reads `nft -j list table` output, item by item as nft writes it, into
//! our table type and the recorded state id.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::net::IpAddr;

use ipnet::IpNet;
use serde_json::Value as Json;

use crate::dataplane::DataplaneError;
use crate::state::*;

fn parse_error(id: &TableId, detail: impl Into<String>) -> DataplaneError {
    DataplaneError::NftParse {
        context: format!("table {id}"),
        detail: detail.into(),
    }
}

/// `nft -j list table` output to our types. Rules are known by the hash in
/// their comment; a rule without our comment (someone else's) gets a hash
/// that matches nothing, so its chain is rewritten.
///
/// The listing is read item by item straight from nft's output into the
/// table (typed structs, set elements converted one at a time), never
/// held whole: a listing of 10,000 instances held as `serde_json::Value`
/// trees cost ~35 MiB, and as one buffer ~16 MiB.
pub(super) fn parse_table(
    listing: impl std::io::Read,
    id: &TableId,
) -> Result<(NftTable, Option<String>), DataplaneError> {
    let mut builder = TableBuilder::default();
    let mut deserializer = serde_json::Deserializer::from_reader(listing);
    serde::de::DeserializeSeed::deserialize(ListingSeed(&mut builder), &mut deserializer)
        .and_then(|()| deserializer.end())
        .map_err(|e| parse_error(id, e.to_string()))?;
    Ok((builder.table, builder.state_id))
}

/// What the listing read so far adds up to.
#[derive(Default)]
struct TableBuilder {
    table: NftTable,
    state_id: Option<String>,
}

impl TableBuilder {
    fn add(&mut self, item: ListItem<'_>) {
        if let Some(chain) = item.chain {
            if chain.name != STATE_CHAIN {
                self.table.chains.insert(
                    chain.name.to_string(),
                    NftChain {
                        base: parse_base_chain(&chain),
                        rules: Vec::new(),
                    },
                );
            }
        } else if let Some(set) = item.set.or(item.map) {
            let name = set.name.to_string();
            self.table.sets.insert(name, parse_set(set));
        } else if let Some(rule) = item.rule {
            self.add_rule(rule);
        }
    }

    fn add_rule(&mut self, rule: RuleListing<'_>) {
        let comment = rule.comment.as_deref().unwrap_or("");
        if rule.chain == STATE_CHAIN {
            if let Some(state) = comment.strip_prefix(STATE_COMMENT_PREFIX) {
                self.state_id = Some(state.to_string());
            }
            return;
        }
        let hash = comment
            .strip_prefix(RULE_COMMENT_PREFIX)
            .and_then(RuleHash::from_hex)
            .unwrap_or_else(|| RuleHash::foreign(rule.handle.unwrap_or(0)));
        if let Some(chain) = self.table.chains.get_mut(rule.chain.as_ref()) {
            chain.rules.push(NftRule {
                hash,
                statements: Vec::new(),
                handle: rule.handle,
            });
        }
    }
}

/// `{"nftables": [item, ...]}`, each item handed to the builder as soon as
/// it is read, so the listing is never held as a whole.
struct ListingSeed<'b>(&'b mut TableBuilder);

impl<'de> serde::de::DeserializeSeed<'de> for ListingSeed<'_> {
    type Value = ();
    fn deserialize<D: serde::Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_map(self)
    }
}

impl<'de> serde::de::Visitor<'de> for ListingSeed<'_> {
    type Value = ();
    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("an nft JSON listing")
    }
    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let mut seen = false;
        while let Some(key) = map.next_key::<Cow<'de, str>>()? {
            if key == "nftables" {
                map.next_value_seed(ItemsSeed(&mut *self.0))?;
                seen = true;
            } else {
                map.next_value::<serde::de::IgnoredAny>()?;
            }
        }
        if !seen {
            return Err(serde::de::Error::missing_field("nftables"));
        }
        Ok(())
    }
}

struct ItemsSeed<'b>(&'b mut TableBuilder);

impl<'de> serde::de::DeserializeSeed<'de> for ItemsSeed<'_> {
    type Value = ();
    fn deserialize<D: serde::Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_seq(self)
    }
}

impl<'de> serde::de::Visitor<'de> for ItemsSeed<'_> {
    type Value = ();
    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("an array of nft objects")
    }
    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        while let Some(item) = seq.next_element::<ListItem<'de>>()? {
            self.0.add(item);
        }
        Ok(())
    }
}

/// The parts of one listed object we read. Rules are most of the listing,
/// and we need only their chain, handle and comment: their expressions are
/// skipped unparsed. Names borrow from nft's output where they can.
#[derive(serde::Deserialize)]
struct ListItem<'a> {
    #[serde(borrow)]
    chain: Option<ChainListing<'a>>,
    #[serde(borrow)]
    set: Option<SetListing<'a>>,
    #[serde(borrow)]
    map: Option<SetListing<'a>>,
    #[serde(borrow)]
    rule: Option<RuleListing<'a>>,
}

#[derive(serde::Deserialize)]
struct ChainListing<'a> {
    #[serde(borrow)]
    name: Cow<'a, str>,
    #[serde(borrow)]
    hook: Option<Cow<'a, str>>,
    #[serde(rename = "type", borrow)]
    chain_type: Option<Cow<'a, str>>,
    prio: Option<Json>,
    #[serde(borrow)]
    policy: Option<Cow<'a, str>>,
}

#[derive(serde::Deserialize)]
struct SetListing<'a> {
    #[serde(borrow)]
    name: Cow<'a, str>,
    /// A type name, or an array of them for a concatenation.
    #[serde(rename = "type", default)]
    key_type: Json,
    #[serde(borrow)]
    map: Option<Cow<'a, str>>,
    #[serde(default)]
    flags: Json,
    #[serde(default)]
    elem: ListedElements,
}

#[derive(serde::Deserialize)]
struct RuleListing<'a> {
    #[serde(borrow)]
    chain: Cow<'a, str>,
    handle: Option<u64>,
    #[serde(borrow)]
    comment: Option<Cow<'a, str>>,
}

/// A set's elements as canonical key and value text, each element read as
/// a small JSON value and converted at once (a set of 10,000 elements is
/// never a tree). Keys are as printed: the interval normalisation is done
/// by `parse_set`, which knows the flags.
#[derive(Default)]
struct ListedElements(BTreeMap<ElemText, Option<ElemText>>);

impl<'de> serde::Deserialize<'de> for ListedElements {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_seq(ElementsVisitor)
    }
}

struct ElementsVisitor;

impl<'de> serde::de::Visitor<'de> for ElementsVisitor {
    type Value = ListedElements;
    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("an array of set elements")
    }
    fn visit_seq<A: serde::de::SeqAccess<'de>>(
        self,
        mut seq: A,
    ) -> Result<ListedElements, A::Error> {
        let mut elements = BTreeMap::new();
        while let Some(elem) = seq.next_element::<Json>()? {
            let (key, value) = match elem.as_array() {
                Some(pair) if pair.len() == 2 => (&pair[0], Some(&pair[1])),
                _ => (&elem, None),
            };
            let key = element_key(key).ok_or_else(|| {
                serde::de::Error::custom(format!("an element we cannot read: {elem}"))
            })?;
            elements.insert(key.into(), value.map(|v| element_value(v).into()));
        }
        Ok(ListedElements(elements))
    }
}

fn parse_base_chain(chain: &ChainListing<'_>) -> Option<BaseChain> {
    let hook = match chain.hook.as_deref()? {
        "prerouting" => Hook::Prerouting,
        "input" => Hook::Input,
        "forward" => Hook::Forward,
        "output" => Hook::Output,
        "postrouting" => Hook::Postrouting,
        _ => return None,
    };
    let chain_type = match chain.chain_type.as_deref()? {
        "nat" => ChainType::Nat,
        _ => ChainType::Filter,
    };
    Some(BaseChain {
        chain_type,
        hook,
        priority: chain.prio.as_ref().and_then(Json::as_i64).unwrap_or(0) as i32,
        policy_accept: chain.policy.as_deref() != Some("drop"),
    })
}

fn parse_set(set: SetListing<'_>) -> NftSet {
    let key_type = match &set.key_type {
        Json::Array(parts) => {
            let parts: Vec<&str> = parts.iter().filter_map(Json::as_str).collect();
            static_type(&parts.join(" . "))
        }
        other => static_type(other.as_str().unwrap_or("")),
    };
    let value = match set.map.as_deref() {
        None => SetValue::None,
        Some("verdict") => SetValue::Verdict,
        Some(other) => SetValue::Data(static_type(other)),
    };
    let interval = set
        .flags
        .as_array()
        .is_some_and(|flags| flags.iter().any(|f| f == "interval"));
    let mut elements = set.elem.0;
    if interval {
        elements = elements
            .into_iter()
            .map(|(key, value)| (interval_key(key), value))
            .collect();
    }
    NftSet {
        key_type,
        value,
        interval,
        elements,
    }
}

/// An interval set prints a host prefix as a bare address.
fn interval_key(key: ElemText) -> ElemText {
    match key.parse::<IpAddr>() {
        Ok(addr) => IpNet::from(addr).to_string().into(),
        Err(_) => key,
    }
}

/// Type names we write, as `&'static str`; anything else is someone's
/// tampering and reads as a type we never use (so the set is made anew).
fn static_type(name: &str) -> &'static str {
    match name {
        "ipv4_addr" => "ipv4_addr",
        "ipv6_addr" => "ipv6_addr",
        "ifname" => "ifname",
        "ifname . ether_addr" => "ifname . ether_addr",
        "ifname . ipv4_addr" => "ifname . ipv4_addr",
        "ifname . ipv6_addr" => "ifname . ipv6_addr",
        _ => "unknown",
    }
}

pub(super) fn element_key(key: &Json) -> Option<String> {
    let key = key.get("elem").map(|e| &e["val"]).unwrap_or(key);
    if let Some(Json::Array(parts)) = key.get("concat") {
        let parts: Option<Vec<&str>> = parts.iter().map(Json::as_str).collect();
        return Some(parts?.join(" . "));
    }
    if let Some(prefix) = key.get("prefix") {
        return Some(format!(
            "{}/{}",
            prefix["addr"].as_str()?,
            prefix["len"].as_u64()?
        ));
    }
    key.as_str().map(str::to_string)
}

fn element_value(value: &Json) -> String {
    if let Some(jump) = value.get("jump") {
        return jump_value(jump["target"].as_str().unwrap_or("")).into();
    }
    if value.get("drop").is_some() {
        return DROP_VALUE.to_string();
    }
    match value.as_str() {
        Some(text) => text.to_string(),
        None => value.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn concatenated_keys_read_back_joined() {
        assert_eq!(
            element_key(&json!({"concat": ["vn_x", "10.1.0.33"]})).as_deref(),
            Some("vn_x . 10.1.0.33")
        );
    }

    #[test]
    fn read_back_parses_rules_sets_and_state() {
        let listing = json!({"nftables": [
            {"metainfo": {"json_schema_version": 1}},
            {"table": {"family": "inet", "name": "edgenet", "handle": 1}},
            {"chain": {"family": "inet", "table": "edgenet", "name": "forward", "handle": 2,
                       "type": "filter", "hook": "forward", "prio": 0, "policy": "accept"}},
            {"chain": {"family": "inet", "table": "edgenet", "name": "state", "handle": 3}},
            {"map": {"family": "inet", "name": "instances", "table": "edgenet", "type": "ipv4_addr",
                     "handle": 4, "map": "verdict",
                     "elem": [["10.1.0.33", {"jump": {"target": "in_i-1"}}], ["10.1.0.34", {"drop": null}]]}},
            {"set": {"family": "inet", "name": "subnets4", "table": "edgenet", "type": "ipv4_addr",
                     "handle": 5, "flags": ["interval"],
                     "elem": [{"prefix": {"addr": "10.1.0.0", "len": 16}}, "10.2.0.1"]}},
            {"rule": {"family": "inet", "table": "edgenet", "chain": "forward", "handle": 7,
                      "comment": "edgenet:00112233445566778899", "expr": []}},
            {"rule": {"family": "inet", "table": "edgenet", "chain": "forward", "handle": 8, "expr": []}},
            {"rule": {"family": "inet", "table": "edgenet", "chain": "state", "handle": 9,
                      "comment": "edgenet-state:v1-abc", "expr": []}}
        ]});
        let id = TableId::ours(Family::Inet);
        let (table, state) = parse_table(listing.to_string().as_bytes(), &id).unwrap();
        assert_eq!(state.as_deref(), Some("v1-abc"));
        assert!(!table.chains.contains_key(STATE_CHAIN));
        let forward = &table.chains["forward"];
        assert_eq!(forward.base.unwrap().hook, Hook::Forward);
        let hashes: Vec<String> = forward.rule_hashes().map(|h| h.to_string()).collect();
        assert_eq!(
            hashes,
            ["00112233445566778899", &RuleHash::foreign(8).to_string()]
        );
        assert_eq!(forward.rules[0].handle, Some(7));
        let instances = &table.sets["instances"];
        assert_eq!(instances.value, SetValue::Verdict);
        assert_eq!(
            instances.elements["10.1.0.33"].as_deref(),
            Some("jump in_i-1")
        );
        assert_eq!(instances.elements["10.1.0.34"].as_deref(), Some("drop"));
        assert!(table.sets["subnets4"].elements.contains_key("10.1.0.0/16"));
        assert!(table.sets["subnets4"].elements.contains_key("10.2.0.1/32"));
    }

    #[test]
    fn unreadable_element_is_a_parse_error() {
        let listing = json!({"nftables": [
            {"set": {"family": "inet", "name": "s", "table": "edgenet", "type": "ipv4_addr",
                     "elem": [{"range": ["10.0.0.1", "10.0.0.9"]}]}}
        ]});
        let id = TableId::ours(Family::Inet);
        let error = parse_table(listing.to_string().as_bytes(), &id).unwrap_err();
        assert!(matches!(error, DataplaneError::NftParse { .. }), "{error}");
    }
}
