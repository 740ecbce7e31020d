//! Deltas between two sectioned views: computing, reading, applying.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::Arc;

use serde::ser::SerializeStruct;
use serde::{Deserialize, Serialize, Serializer};

use crate::canonical::StateId;
use crate::v2::error::{DeltaError, SectionError};
use crate::v2::section::{GroupId, Section, SectionDigest, SectionName, SectionValue};
use crate::v2::sectioned::SectionedView;
use crate::v2::wire;

/// What turns a base view into a target view (docs/protocol.md, "Version 2").
/// Sections are shared, not copied: a delta built for many views holds one
/// copy of each changed section.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Delta {
    /// Sections new or changed, each whole.
    pub set: BTreeMap<SectionName, Section>,
    /// Sections of the base that are gone.
    pub remove: Vec<SectionName>,
    /// Member lists in base and target, as the addresses added and removed.
    pub members: BTreeMap<GroupId, Arc<MembersChange>>,
}

/// A member list's change. Both lists are in the canonical address order.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MembersChange {
    #[serde(default)]
    pub add: Vec<String>,
    #[serde(default)]
    pub remove: Vec<String>,
}

/// Member-list changes already worked out, by (base digest, target digest).
/// A server that answers many views after one change keeps one of these for
/// the change, so a list shared by those views is compared once.
#[derive(Debug, Default)]
pub struct MemberDiffs(HashMap<(SectionDigest, SectionDigest), Option<Arc<MembersChange>>>);

impl Delta {
    pub fn is_empty(&self) -> bool {
        self.set.is_empty() && self.remove.is_empty() && self.members.is_empty()
    }

    /// The delta from `base` to `target`.
    pub fn between(base: &SectionedView, target: &SectionedView) -> Delta {
        Self::between_with(base, target, &mut MemberDiffs::default())
    }

    /// The delta from `base` to `target`, comparing the two manifests (one
    /// digest per section, never a section's content) and copying nothing
    /// but the changed sections' handles. Only a changed member list is
    /// read, once per `diffs`.
    pub fn between_with(
        base: &SectionedView,
        target: &SectionedView,
        diffs: &mut MemberDiffs,
    ) -> Delta {
        let mut delta = Delta::default();
        let mut old = base.sections().iter().peekable();
        let mut new = target.sections().iter().peekable();
        loop {
            let order = match (old.peek(), new.peek()) {
                (None, None) => break,
                (Some(_), None) => std::cmp::Ordering::Less,
                (None, Some(_)) => std::cmp::Ordering::Greater,
                (Some((a, _)), Some((b, _))) => a.cmp(b),
            };
            match order {
                std::cmp::Ordering::Less => {
                    let (name, _) = old.next().expect("peeked");
                    delta.remove.push(name.clone());
                }
                std::cmp::Ordering::Greater => {
                    let (name, section) = new.next().expect("peeked");
                    delta.set.insert(name.clone(), section.clone());
                }
                std::cmp::Ordering::Equal => {
                    let (name, before) = old.next().expect("peeked");
                    let (_, after) = new.next().expect("peeked");
                    delta.changed(name, before, after, diffs);
                }
            }
        }
        delta
    }

    fn changed(
        &mut self,
        name: &SectionName,
        before: &Section,
        after: &Section,
        diffs: &mut MemberDiffs,
    ) {
        if before.same_content(after) {
            return;
        }
        if let SectionName::GroupMembers(group) = name {
            if let Some(change) = diffs.between(before, after) {
                self.members.insert(group.clone(), change);
                return;
            }
        }
        self.set.insert(name.clone(), after.clone());
    }

    /// Every name at most once across `set`, `remove` and `members`.
    fn check_names(&self) -> Result<(), DeltaError> {
        let mut removed = BTreeSet::new();
        for name in &self.remove {
            if self.set.contains_key(name) || !removed.insert(name) {
                return Err(DeltaError::NamedTwice(name.to_string()));
            }
        }
        for group in self.members.keys() {
            let name = SectionName::GroupMembers(group.clone());
            if self.set.contains_key(&name) || removed.contains(&name) {
                return Err(DeltaError::NamedTwice(name.to_string()));
            }
        }
        Ok(())
    }
}

impl MemberDiffs {
    /// `None` when the whole list is the shorter message, or when a list
    /// names an address twice (add/remove would be ambiguous then).
    fn between(&mut self, before: &Section, after: &Section) -> Option<Arc<MembersChange>> {
        let key = (before.digest(), after.digest());
        self.0
            .entry(key)
            .or_insert_with(|| members_change(before.members()?, after.members()?).map(Arc::new))
            .clone()
    }
}

fn members_change(before: &[String], after: &[String]) -> Option<MembersChange> {
    let old: HashSet<&str> = before.iter().map(String::as_str).collect();
    let new: HashSet<&str> = after.iter().map(String::as_str).collect();
    if old.len() != before.len() || new.len() != after.len() {
        return None;
    }
    let change = MembersChange {
        add: after
            .iter()
            .filter(|ip| !old.contains(ip.as_str()))
            .cloned()
            .collect(),
        remove: before
            .iter()
            .filter(|ip| !new.contains(ip.as_str()))
            .cloned()
            .collect(),
    };
    (change.add.len() + change.remove.len() < after.len()).then_some(change)
}

impl SectionedView {
    /// Applies `delta` to this view and checks the result's id against
    /// `expected`, re-hashing only the sections the delta touches. On any
    /// error this view is unchanged and nothing of the delta is kept.
    pub fn apply(&self, delta: &Delta, expected: &StateId) -> Result<SectionedView, DeltaError> {
        delta.check_names()?;
        let mut sections = self.clone().into_sections();
        for name in &delta.remove {
            if name.is_required() {
                return Err(DeltaError::RemoveRequired(name.to_string()));
            }
            if sections.remove(name).is_none() {
                return Err(DeltaError::RemoveAbsent(name.to_string()));
            }
        }
        for (name, section) in &delta.set {
            if !section.value().fits(name) {
                return Err(SectionError::WrongValue(name.to_string()).into());
            }
            sections.insert(name.clone(), section.clone());
        }
        for (group, change) in &delta.members {
            let name = SectionName::GroupMembers(group.clone());
            let base = self
                .get(&name)
                .and_then(Section::members)
                .ok_or_else(|| DeltaError::MembersForAbsentList(group.to_string()))?;
            let ips = apply_members(group, base, change)?;
            sections.insert(name, Section::new(SectionValue::GroupMembers(ips)));
        }
        let result = SectionedView::from_checked_map(sections)?;
        if result.state_id() != expected {
            return Err(DeltaError::IdMismatch {
                expected: expected.clone(),
                computed: result.state_id().clone(),
            });
        }
        Ok(result)
    }

    /// Applies a v2 delta answer, which must be against this view.
    pub fn apply_answer(&self, answer: &DeltaAnswer) -> Result<SectionedView, DeltaError> {
        if answer.base_state_id != *self.state_id() {
            return Err(DeltaError::BaseMismatch {
                base: answer.base_state_id.clone(),
                held: self.state_id().clone(),
            });
        }
        self.apply(&answer.delta, &answer.state_id)
    }
}

/// `base` without the removed addresses and with the added ones; the caller
/// puts the list in order. Every address must be named once and make sense.
fn apply_members(
    group: &GroupId,
    base: &[String],
    change: &MembersChange,
) -> Result<Vec<String>, DeltaError> {
    let named_twice = |address: &str| DeltaError::MemberNamedTwice {
        group: group.to_string(),
        address: address.to_owned(),
    };
    let mut removed: HashSet<&str> = HashSet::with_capacity(change.remove.len());
    for address in &change.remove {
        if !removed.insert(address) {
            return Err(named_twice(address));
        }
    }
    let mut added: HashSet<&str> = HashSet::with_capacity(change.add.len());
    for address in &change.add {
        if removed.contains(address.as_str()) || !added.insert(address) {
            return Err(named_twice(address));
        }
    }
    let mut kept = Vec::with_capacity(base.len() + change.add.len());
    for address in base {
        if added.contains(address.as_str()) {
            return Err(DeltaError::MemberAlreadyPresent {
                group: group.to_string(),
                address: address.clone(),
            });
        }
        if !removed.remove(address.as_str()) {
            kept.push(address.clone());
        }
    }
    if let Some(address) = change.remove.iter().find(|a| removed.contains(a.as_str())) {
        return Err(DeltaError::MemberNotPresent {
            group: group.to_string(),
            address: address.clone(),
        });
    }
    kept.extend(change.add.iter().cloned());
    Ok(kept)
}

/// A v2 200 answer that carries a delta.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeltaAnswer {
    #[serde(rename = "StateId", deserialize_with = "wire::strict_state_id")]
    pub state_id: StateId,
    #[serde(rename = "NodeId")]
    pub node_id: String,
    #[serde(rename = "BaseStateId", deserialize_with = "wire::strict_state_id")]
    pub base_state_id: StateId,
    #[serde(rename = "Delta")]
    pub delta: Delta,
}

impl Serialize for Delta {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut remove = self.remove.clone();
        remove.sort();
        let mut delta = serializer.serialize_struct("Delta", 3)?;
        delta.serialize_field("members", &wire::MembersOut(&self.members))?;
        delta.serialize_field("remove", &remove)?;
        delta.serialize_field("set", &self.set)?;
        delta.end()
    }
}

impl<'de> Deserialize<'de> for Delta {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let wire = wire::DeltaIn::deserialize(deserializer)?;
        Ok(Delta {
            set: wire.set.0,
            remove: wire.remove,
            members: wire.members.0,
        })
    }
}
