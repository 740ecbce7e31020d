//! The key layout of the model in etcd (docs/store.md): which key holds
//! which entity, and the translation between keys and model changes.

use std::collections::BTreeMap;

use edgenet_model::{CloudModel, ModelChange, Route, SCHEMA_VERSION};
use serde::de::DeserializeOwned;
use serde::Serialize;
use sha2::{Digest, Sha256};

/// The prefix when `--etcd-prefix` is not given.
pub const DEFAULT_PREFIX: &str = "/edgenet/v1/";

/// The value a writer puts in `P/commit` at least.
pub const COMMIT_SCHEMA: i64 = 1;

/// What a key under the prefix holds.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum Key {
    Metadata,
    PublicIps,
    Subnet(String),
    Node(String),
    Instance(String),
    SecurityGroup(String),
    /// A route by the writer's name for it.
    Route(String),
    Commit,
    Status(String),
}

impl Key {
    /// Whether the key is part of the model (commit and status are not).
    pub fn is_model(&self) -> bool {
        !matches!(self, Key::Commit | Key::Status(_))
    }

    /// The key's path below the prefix, e.g. `instances/i-1`.
    pub fn suffix(&self) -> String {
        match self {
            Key::Metadata => "metadata".into(),
            Key::PublicIps => "public_ips".into(),
            Key::Subnet(id) => format!("subnets/{id}"),
            Key::Node(id) => format!("nodes/{id}"),
            Key::Instance(id) => format!("instances/{id}"),
            Key::SecurityGroup(id) => format!("security_groups/{id}"),
            Key::Route(name) => format!("routes/{name}"),
            Key::Commit => "commit".into(),
            Key::Status(node) => format!("status/{node}"),
        }
    }

    fn parse(suffix: &str) -> Option<Key> {
        let (kind, id) = match suffix.split_once('/') {
            Some((kind, id)) if !id.is_empty() => (kind, Some(id.to_owned())),
            Some(_) => return None,
            None => (suffix, None),
        };
        Some(match (kind, id) {
            ("metadata", None) => Key::Metadata,
            ("public_ips", None) => Key::PublicIps,
            ("commit", None) => Key::Commit,
            ("subnets", Some(id)) => Key::Subnet(id),
            ("nodes", Some(id)) => Key::Node(id),
            ("instances", Some(id)) => Key::Instance(id),
            ("security_groups", Some(id)) => Key::SecurityGroup(id),
            ("routes", Some(name)) => Key::Route(name),
            ("status", Some(node)) => Key::Status(node),
            _ => return None,
        })
    }
}

/// Keys under one prefix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layout {
    prefix: String,
}

impl Layout {
    /// A prefix always ends in `/`, so `P/commit` is `prefix + "commit"`.
    pub fn new(prefix: &str) -> Self {
        let mut prefix = prefix.to_owned();
        if !prefix.ends_with('/') {
            prefix.push('/');
        }
        Layout { prefix }
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    pub fn key(&self, key: &Key) -> String {
        format!("{}{}", self.prefix, key.suffix())
    }

    /// `None` for keys outside the prefix or not in the layout (ignored, so
    /// a writer's own bookkeeping under the prefix does not break readers).
    pub fn parse(&self, key: &[u8]) -> Option<Key> {
        let key = std::str::from_utf8(key).ok()?;
        Key::parse(key.strip_prefix(&self.prefix)?)
    }
}

/// Model keys and their JSON values: the store's side of a model.
pub type Entries = BTreeMap<Key, Vec<u8>>;

/// A route's key name when `model push` writes it: derived from its
/// content, so the same route always lands under the same key.
pub fn route_name(route: &Route) -> String {
    let digest = Sha256::digest(to_json(route));
    format!("r-{}", hex::encode(&digest[..10]))
}

/// The entries that hold `model`.
pub fn entries_of(model: &CloudModel) -> Entries {
    let mut entries = Entries::new();
    if let Some(metadata) = &model.metadata {
        entries.insert(Key::Metadata, to_json(metadata));
    }
    if !model.public_ips.is_empty() {
        entries.insert(Key::PublicIps, to_json(&model.public_ips));
    }
    for s in &model.subnets {
        entries.insert(Key::Subnet(s.id.clone()), to_json(s));
    }
    for n in &model.nodes {
        entries.insert(Key::Node(n.id.clone()), to_json(n));
    }
    for i in &model.instances {
        entries.insert(Key::Instance(i.id.clone()), to_json(i));
    }
    for g in &model.security_groups {
        entries.insert(Key::SecurityGroup(g.id.clone()), to_json(g));
    }
    for r in &model.routes {
        entries.insert(Key::Route(route_name(r)), to_json(r));
    }
    entries
}

/// The model the entries hold, or every key that does not decode.
pub fn model_of(entries: &Entries) -> Result<CloudModel, Vec<String>> {
    let mut model = empty_model();
    let mut errors = Vec::new();
    let mut change = ModelChange::default();
    for (key, value) in entries {
        if let Err(e) = add_entry(&mut change, key, None, Some(value)) {
            errors.push(e);
        }
    }
    if !errors.is_empty() {
        return Err(errors);
    }
    change.apply_to(&mut model);
    Ok(model)
}

pub fn empty_model() -> CloudModel {
    CloudModel {
        instances: Vec::new(),
        metadata: None,
        nodes: Vec::new(),
        public_ips: Vec::new(),
        routes: Vec::new(),
        schema: SCHEMA_VERSION,
        security_groups: Vec::new(),
        subnets: Vec::new(),
    }
}

/// Adds to `change` what a key going from `old` to `new` (absent: `None`)
/// means. An error names the key and what is wrong with its value.
pub fn add_entry(
    change: &mut ModelChange,
    key: &Key,
    old: Option<&[u8]>,
    new: Option<&[u8]>,
) -> Result<(), String> {
    let suffix = key.suffix();
    match key {
        Key::Metadata => change.metadata = Some(decode_opt(&suffix, new)?),
        Key::PublicIps => change.public_ips = Some(decode_opt(&suffix, new)?.unwrap_or_default()),
        Key::Subnet(id) => by_id(&mut change.subnets, &suffix, id, new, |s| &s.id)?,
        Key::Node(id) => by_id(&mut change.nodes, &suffix, id, new, |n| &n.id)?,
        Key::Instance(id) => by_id(&mut change.instances, &suffix, id, new, |i| &i.id)?,
        Key::SecurityGroup(id) => by_id(&mut change.security_groups, &suffix, id, new, |g| &g.id)?,
        Key::Route(name) => {
            if !valid_route_name(name) {
                return Err(format!("{suffix}: a route name is [A-Za-z0-9._-]{{1,128}}"));
            }
            if let Some(old) = decode_opt::<Route>(&suffix, old)? {
                change.routes.removed.push(old);
            }
            if let Some(new) = decode_opt::<Route>(&suffix, new)? {
                change.routes.added.push(new);
            }
        }
        Key::Commit | Key::Status(_) => {}
    }
    Ok(())
}

fn by_id<T: DeserializeOwned>(
    kind: &mut edgenet_model::KindChange<T>,
    suffix: &str,
    id: &str,
    new: Option<&[u8]>,
    id_of: impl Fn(&T) -> &String,
) -> Result<(), String> {
    match decode_opt::<T>(suffix, new)? {
        Some(entity) if id_of(&entity) != id => Err(format!(
            "{suffix}.id: is {:?}, but the key says {id:?}",
            id_of(&entity)
        )),
        Some(entity) => {
            kind.upserts.push(entity);
            Ok(())
        }
        None => {
            kind.removals.push(id.to_owned());
            Ok(())
        }
    }
}

fn decode_opt<T: DeserializeOwned>(
    suffix: &str,
    value: Option<&[u8]>,
) -> Result<Option<T>, String> {
    match value {
        None => Ok(None),
        Some(bytes) => edgenet_model::parse_document(bytes)
            .map(Some)
            .map_err(|e| format!("{suffix}: {e}")),
    }
}

fn valid_route_name(name: &str) -> bool {
    (1..=128).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

pub fn to_json<T: Serialize + ?Sized>(value: &T) -> Vec<u8> {
    serde_json::to_vec(value).expect("model types always serialise")
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXAMPLE: &str = include_str!("../../../examples/cloud.json");

    #[test]
    fn keys_round_trip_under_the_prefix() {
        let layout = Layout::new("/edgenet/v1");
        for key in [
            Key::Metadata,
            Key::PublicIps,
            Key::Instance("i-1".into()),
            Key::Route("default".into()),
            Key::Commit,
            Key::Status("nc-1".into()),
        ] {
            let text = layout.key(&key);
            assert!(text.starts_with("/edgenet/v1/"), "{text}");
            assert_eq!(layout.parse(text.as_bytes()), Some(key));
        }
        assert_eq!(layout.parse(b"/edgenet/v1/instances/"), None);
        assert_eq!(layout.parse(b"/other/instances/i-1"), None);
    }

    #[test]
    fn a_model_survives_entries() {
        let model = edgenet_model::parse_model(EXAMPLE.as_bytes()).unwrap();
        let back = model_of(&entries_of(&model)).unwrap();
        let change = ModelChange::between(&model, &back);
        assert!(change.is_empty(), "{change:?}");
    }

    #[test]
    fn a_key_whose_id_differs_from_the_entity_is_named() {
        let mut entries = Entries::new();
        entries.insert(
            Key::Node("nc-1".into()),
            br#"{"id":"nc-2","bridge":"br0","public_interface":"eth0"}"#.to_vec(),
        );
        let errors = model_of(&entries).unwrap_err();
        assert!(errors[0].starts_with("nodes/nc-1.id"), "{errors:?}");
    }
}
