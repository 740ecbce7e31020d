//! Set elements as nft JSON, grouped into one command per set.

use std::collections::BTreeMap;
use std::net::IpAddr;

use ipnet::IpNet;

use super::objects::NftCommand;
use crate::state::{TableId, DROP_VALUE};

/// One set element as nft JSON: the key alone, or `[key, value]` for a map.
/// Typed, so it is serialised straight into its command's text without a
/// `serde_json::Value` per element (80,000 of them at 10,000 instances).
#[derive(serde::Serialize)]
#[serde(untagged)]
pub(super) enum ElementJson<'a> {
    Key(KeyJson<'a>),
    Pair(KeyJson<'a>, ValueJson<'a>),
}

#[derive(serde::Serialize)]
#[serde(untagged)]
pub(super) enum KeyJson<'a> {
    Concat { concat: Vec<&'a str> },
    Prefix { prefix: PrefixJson },
    Plain(&'a str),
}

#[derive(serde::Serialize)]
pub(super) struct PrefixJson {
    addr: IpAddr,
    len: u8,
}

#[derive(serde::Serialize)]
#[serde(untagged)]
pub(super) enum ValueJson<'a> {
    Jump { jump: JumpJson<'a> },
    Drop { drop: () },
    Plain(&'a str),
}

#[derive(serde::Serialize)]
pub(super) struct JumpJson<'a> {
    target: &'a str,
}

pub(super) fn element_json<'a>(
    key: &'a str,
    value: Option<&'a str>,
    interval: bool,
) -> ElementJson<'a> {
    let key_json = if key.contains(" . ") {
        KeyJson::Concat {
            concat: key.split(" . ").collect(),
        }
    } else {
        plain_key_json(key, interval)
    };
    match value {
        None => ElementJson::Key(key_json),
        Some(value) => {
            let value_json = if let Some(target) = value.strip_prefix("jump ") {
                ValueJson::Jump {
                    jump: JumpJson { target },
                }
            } else if value == DROP_VALUE {
                ValueJson::Drop { drop: () }
            } else {
                ValueJson::Plain(value)
            };
            ElementJson::Pair(key_json, value_json)
        }
    }
}

fn plain_key_json(key: &str, interval: bool) -> KeyJson<'_> {
    match (interval, key.parse::<IpNet>()) {
        (true, Ok(net)) => KeyJson::Prefix {
            prefix: PrefixJson {
                addr: net.addr(),
                len: net.prefix_len(),
            },
        },
        _ => KeyJson::Plain(key),
    }
}

/// Elements to add or delete, grouped by set so each set takes one command;
/// each set's elements are kept as their JSON text, comma separated.
#[derive(Default)]
pub(super) struct ElementBatch<'c> {
    by_set: BTreeMap<(&'c TableId, &'c str), Vec<u8>>,
}

impl<'c> ElementBatch<'c> {
    pub(super) fn push(&mut self, id: &'c TableId, set: &'c str, element: ElementJson<'_>) {
        let text = self.by_set.entry((id, set)).or_default();
        if !text.is_empty() {
            text.push(b',');
        }
        serde_json::to_writer(text, &element).expect("an element serialises");
    }

    pub(super) fn commands(self, verb: &str) -> Vec<NftCommand> {
        self.by_set
            .into_iter()
            .map(|((id, set), elems)| element_command(verb, id, set, &elems))
            .collect()
    }
}

/// `{"<verb>":{"element":{"family":…,"table":…,"name":…,"elem":[<elems>]}}}`.
fn element_command(verb: &str, id: &TableId, set: &str, elems: &[u8]) -> NftCommand {
    let text = |s: &str| serde_json::to_string(s).expect("a string serialises");
    let mut command = format!(
        "{{{}:{{\"element\":{{\"family\":{},\"table\":{},\"name\":{},\"elem\":[",
        text(verb),
        text(id.family.as_str()),
        text(&id.name),
        text(set),
    );
    // Serialised by serde_json from `&str`s: valid UTF-8.
    command.push_str(std::str::from_utf8(elems).expect("serde_json writes UTF-8"));
    command.push_str("]}}}");
    command
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::{Family, TableId};
    use serde_json::{json, Value as Json};

    fn as_json(element: ElementJson<'_>) -> Json {
        serde_json::to_value(element).unwrap()
    }

    #[test]
    fn element_json_forms() {
        assert_eq!(
            as_json(element_json("10.1.0.1", None, false)),
            json!("10.1.0.1")
        );
        assert_eq!(
            as_json(element_json("10.1.0.0/16", None, true)),
            json!({"prefix": {"addr": "10.1.0.0", "len": 16}})
        );
        assert_eq!(
            as_json(element_json("10.1.0.33", Some("jump in_x"), false)),
            json!(["10.1.0.33", {"jump": {"target": "in_x"}}])
        );
        assert_eq!(
            as_json(element_json("10.1.0.34", Some("drop"), false)),
            json!(["10.1.0.34", {"drop": null}])
        );
        assert_eq!(
            as_json(element_json("vn_x . d0:0d:00:00:00:01", None, false)),
            json!({"concat": ["vn_x", "d0:0d:00:00:00:01"]})
        );
    }

    #[test]
    fn element_commands_are_one_json_object_per_set() {
        let id = TableId::ours(Family::Inet);
        let mut batch = ElementBatch::default();
        batch.push(
            &id,
            "instances",
            element_json("10.1.0.33", Some("jump in_x"), false),
        );
        batch.push(
            &id,
            "instances",
            element_json("10.1.0.34", Some("drop"), false),
        );
        let commands = batch.commands("add");
        assert_eq!(commands.len(), 1);
        let parsed: Json = serde_json::from_str(&commands[0]).unwrap();
        assert_eq!(
            parsed,
            json!({"add": {"element": {"family": "inet", "table": "edgenet", "name": "instances",
                "elem": [["10.1.0.33", {"jump": {"target": "in_x"}}], ["10.1.0.34", {"drop": null}]]}}})
        );
    }
}
