//! The delta's JSON form. A JSON object may repeat a key, which a map would
//! silently collapse; a delta never names a section twice, so these
//! readers refuse a repeated key instead.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

use serde::de::{self, Deserializer, MapAccess, Visitor};
use serde::{Deserialize, Serialize, Serializer};

use crate::canonical::StateId;
use crate::v2::delta::MembersChange;
use crate::v2::id::parse_state_id;
use crate::v2::section::{GroupId, Section, SectionName, ValueFor};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct DeltaIn {
    #[serde(default)]
    pub set: SetIn,
    #[serde(default)]
    pub remove: Vec<SectionName>,
    #[serde(default)]
    pub members: MembersIn,
}

/// `set`: each value read as the type its name says, canonicalised and
/// hashed on arrival.
#[derive(Default)]
pub(crate) struct SetIn(pub BTreeMap<SectionName, Section>);

impl<'de> Deserialize<'de> for SetIn {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_map(SetVisitor)
    }
}

struct SetVisitor;

impl<'de> Visitor<'de> for SetVisitor {
    type Value = SetIn;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("an object of section name to section value")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<SetIn, A::Error> {
        let mut set = BTreeMap::new();
        while let Some(name) = map.next_key::<SectionName>()? {
            if set.contains_key(&name) {
                return Err(de::Error::custom(format!(
                    "set: section {name} is named twice"
                )));
            }
            let value = map.next_value_seed(ValueFor(&name))?;
            if !value.fits(&name) {
                return Err(de::Error::custom(format!(
                    "set: section {name} holds another group's id"
                )));
            }
            set.insert(name, Section::new(value));
        }
        Ok(SetIn(set))
    }
}

/// `members`: group id to its change.
#[derive(Default)]
pub(crate) struct MembersIn(pub BTreeMap<GroupId, Arc<MembersChange>>);

impl<'de> Deserialize<'de> for MembersIn {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_map(MembersVisitor)
    }
}

struct MembersVisitor;

impl<'de> Visitor<'de> for MembersVisitor {
    type Value = MembersIn;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("an object of group id to {\"add\": […], \"remove\": […]}")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<MembersIn, A::Error> {
        let mut members = BTreeMap::new();
        while let Some(group) = map.next_key::<String>()? {
            let id = GroupId::from(group.as_str());
            if group.is_empty() {
                return Err(de::Error::custom("members: an empty group id"));
            }
            if members.contains_key(&id) {
                return Err(de::Error::custom(format!(
                    "members: group {group} is named twice"
                )));
            }
            members.insert(id, Arc::new(map.next_value::<MembersChange>()?));
        }
        Ok(MembersIn(members))
    }
}

/// Writes `members` through its shared changes.
pub(crate) struct MembersOut<'a>(pub &'a BTreeMap<GroupId, Arc<MembersChange>>);

impl Serialize for MembersOut<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_map(
            self.0
                .iter()
                .map(|(group, change)| (group.as_str(), &**change)),
        )
    }
}

/// A `StateId` field read with the strict id grammar.
pub(crate) fn strict_state_id<'de, D: Deserializer<'de>>(d: D) -> Result<StateId, D::Error> {
    let text = String::deserialize(d)?;
    parse_state_id(&text).map_err(de::Error::custom)
}
