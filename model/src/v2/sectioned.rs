//! A view held as its sections, with its manifest and v2 id.

use std::collections::BTreeMap;

use crate::canonical::{to_canonical_vec, StateId};
use crate::types::NodeView;
use crate::v2::error::SectionError;
use crate::v2::id::v2_id_of_manifest_json;
use crate::v2::section::{Section, SectionName, SectionValue};

/// A canonical view as its sections by name, each with its digest, and the
/// v2 id of their manifest. Cloning copies the name map and shares every
/// section.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SectionedView {
    sections: BTreeMap<SectionName, Section>,
    state_id: StateId,
}

/// Cuts a view into its sections (docs/protocol.md, "Version 2"), each
/// canonicalised and hashed once. Unordered input is put in order, as
/// `NodeView::canonicalize` does. The view's parts are moved, not copied.
pub fn cut_view(view: NodeView) -> Vec<(SectionName, Section)> {
    let mut sections = vec![
        (SectionName::Schema, SectionValue::Schema(view.schema)),
        (SectionName::Node, SectionValue::Node(view.node)),
        (
            SectionName::PublicIps,
            SectionValue::PublicIps(view.public_ips),
        ),
        (SectionName::Subnets, SectionValue::Subnets(view.subnets)),
        (SectionName::Routes, SectionValue::Routes(view.routes)),
        (
            SectionName::Instances,
            SectionValue::Instances(view.instances),
        ),
    ];
    if let Some(metadata) = view.metadata {
        sections.push((SectionName::Metadata, SectionValue::Metadata(metadata)));
    }
    sections.extend(view.security_groups.into_iter().map(|group| {
        (
            SectionName::security_group(&group.id),
            SectionValue::SecurityGroup(group),
        )
    }));
    sections.extend(view.group_members.into_iter().map(|(group, ips)| {
        (
            SectionName::group_members(&group),
            SectionValue::GroupMembers(ips),
        )
    }));
    sections
        .into_iter()
        .map(|(name, value)| (name, Section::new(value)))
        .collect()
}

impl SectionedView {
    /// A view read from the wire may list a group twice; that view has no
    /// v2 form and is refused here.
    pub fn from_view(view: &NodeView) -> Result<Self, SectionError> {
        Self::from_owned_view(view.clone())
    }

    /// As [`Self::from_view`], for a view the caller no longer needs (one
    /// just parsed), whose lists move into the sections.
    pub fn from_owned_view(view: NodeView) -> Result<Self, SectionError> {
        Self::from_sections(cut_view(view))
    }

    /// Assembles a view from sections that may be shared with other views:
    /// nothing is hashed again but the manifest.
    pub fn from_sections(
        sections: impl IntoIterator<Item = (SectionName, Section)>,
    ) -> Result<Self, SectionError> {
        let mut sections: Vec<(SectionName, Section)> = sections.into_iter().collect();
        // Stable and one pass when the input is in order, as it is when it
        // comes from another view; the map is then built in one pass too.
        sections.sort_by(|a, b| a.0.cmp(&b.0));
        if let Some(pair) = sections.windows(2).find(|pair| pair[0].0 == pair[1].0) {
            return Err(SectionError::NamedTwice(pair[0].0.to_string()));
        }
        if let Some((name, _)) = sections.iter().find(|(name, s)| !s.value().fits(name)) {
            return Err(SectionError::WrongValue(name.to_string()));
        }
        let map: BTreeMap<SectionName, Section> = sections.into_iter().collect();
        Self::from_checked_map(map)
    }

    /// This view with some sections replaced (`Some`) or removed (`None`):
    /// the way to follow a change, since only the manifest is hashed again
    /// and the untouched sections stay shared with this view.
    pub fn replacing(
        &self,
        changes: impl IntoIterator<Item = (SectionName, Option<Section>)>,
    ) -> Result<Self, SectionError> {
        let mut sections = self.sections.clone();
        for (name, section) in changes {
            match section {
                Some(section) if !section.value().fits(&name) => {
                    return Err(SectionError::WrongValue(name.to_string()));
                }
                Some(section) => drop(sections.insert(name, section)),
                None => drop(sections.remove(&name)),
            }
        }
        Self::from_checked_map(sections)
    }

    /// `map` holds only sections that fit their names.
    pub(crate) fn from_checked_map(
        sections: BTreeMap<SectionName, Section>,
    ) -> Result<Self, SectionError> {
        if let Some(missing) = SectionName::REQUIRED
            .iter()
            .find(|name| !sections.contains_key(name))
        {
            return Err(SectionError::Missing(missing.to_string()));
        }
        let state_id = v2_id_of_manifest_json(&manifest_json_of(&sections));
        Ok(SectionedView { sections, state_id })
    }

    /// The v2 id: `v2-` and the first 32 hex digits of the SHA-256 of the
    /// manifest's RFC 8785 JSON.
    pub fn state_id(&self) -> &StateId {
        &self.state_id
    }

    pub fn sections(&self) -> &BTreeMap<SectionName, Section> {
        &self.sections
    }

    pub fn get(&self, name: &SectionName) -> Option<&Section> {
        self.sections.get(name)
    }

    /// The manifest, {section name → digest}, as RFC 8785 JSON.
    pub fn manifest_json(&self) -> Vec<u8> {
        manifest_json_of(&self.sections)
    }

    /// The view's canonical JSON, byte for byte the `View` of a v1 answer,
    /// written from the sections' JSON without serialising anything again.
    pub fn canonical_json(&self) -> Vec<u8> {
        let size: usize = self.sections.values().map(|s| s.json().len() + 24).sum();
        let mut out = Vec::with_capacity(size + 128);
        out.extend_from_slice(b"{\"group_members\":{");
        for (position, (group, section)) in self.groups_by_id(true).into_iter().enumerate() {
            if position > 0 {
                out.push(b',');
            }
            out.extend_from_slice(&to_canonical_vec(&group));
            out.push(b':');
            out.extend_from_slice(section.json());
        }
        out.push(b'}');
        self.write_field(&mut out, "instances", &SectionName::Instances);
        if self.sections.contains_key(&SectionName::Metadata) {
            self.write_field(&mut out, "metadata", &SectionName::Metadata);
        }
        self.write_field(&mut out, "node", &SectionName::Node);
        self.write_field(&mut out, "public_ips", &SectionName::PublicIps);
        self.write_field(&mut out, "routes", &SectionName::Routes);
        self.write_field(&mut out, "schema", &SectionName::Schema);
        out.extend_from_slice(b",\"security_groups\":[");
        for (position, (_, section)) in self.groups_by_id(false).into_iter().enumerate() {
            if position > 0 {
                out.push(b',');
            }
            out.extend_from_slice(section.json());
        }
        out.push(b']');
        self.write_field(&mut out, "subnets", &SectionName::Subnets);
        out.push(b'}');
        out
    }

    /// The v1 id of the same view, for a v1 client.
    pub fn v1_state_id(&self) -> StateId {
        StateId::of_canonical_json(&self.canonical_json())
    }

    /// The view as the model types hold it.
    pub fn to_view(&self) -> NodeView {
        let mut view = NodeView {
            group_members: BTreeMap::new(),
            instances: Vec::new(),
            metadata: None,
            node: self.node().clone(),
            public_ips: Vec::new(),
            routes: Vec::new(),
            schema: 0,
            security_groups: Vec::new(),
            subnets: Vec::new(),
        };
        for (name, section) in &self.sections {
            match (name, section.value()) {
                (SectionName::GroupMembers(group), SectionValue::GroupMembers(ips)) => {
                    view.group_members
                        .insert(group.as_str().to_owned(), ips.clone());
                }
                (_, SectionValue::Instances(instances)) => view.instances = instances.clone(),
                (_, SectionValue::Metadata(metadata)) => view.metadata = Some(metadata.clone()),
                (_, SectionValue::PublicIps(ips)) => view.public_ips = ips.clone(),
                (_, SectionValue::Routes(routes)) => view.routes = routes.clone(),
                (_, SectionValue::Schema(schema)) => view.schema = *schema,
                (_, SectionValue::SecurityGroup(group)) => view.security_groups.push(group.clone()),
                (_, SectionValue::Subnets(subnets)) => view.subnets = subnets.clone(),
                // The node is taken above; a member list always sits under
                // a group_members name (checked by `fits`).
                (_, SectionValue::Node(_) | SectionValue::GroupMembers(_)) => {}
            }
        }
        view.security_groups.sort_by(|a, b| a.id.cmp(&b.id));
        view
    }

    /// The node this view is for.
    pub fn node(&self) -> &crate::types::Node {
        match self.sections[&SectionName::Node].value() {
            SectionValue::Node(node) => node,
            _ => unreachable!("every SectionedView has a node section that fits"),
        }
    }

    /// The member lists (`members`) or the groups, ordered by id as
    /// `NodeView` orders them: bytewise, which is the map's UTF-16 order
    /// for every id a valid model has, so the stable sort is one pass.
    fn groups_by_id(&self, members: bool) -> Vec<(&str, &Section)> {
        let mut groups: Vec<(&str, &Section)> = self
            .sections
            .iter()
            .filter_map(|(name, section)| match name {
                SectionName::GroupMembers(id) if members => Some((id.as_str(), section)),
                SectionName::SecurityGroup(id) if !members => Some((id.as_str(), section)),
                _ => None,
            })
            .collect();
        groups.sort_by(|a, b| a.0.cmp(b.0));
        groups
    }

    fn write_field(&self, out: &mut Vec<u8>, key: &str, name: &SectionName) {
        out.extend_from_slice(b",\"");
        out.extend_from_slice(key.as_bytes());
        out.extend_from_slice(b"\":");
        out.extend_from_slice(self.sections[name].json());
    }

    pub(crate) fn into_sections(self) -> BTreeMap<SectionName, Section> {
        self.sections
    }
}

/// `{"name":"digest",…}` in the map's order, which is RFC 8785's.
fn manifest_json_of(sections: &BTreeMap<SectionName, Section>) -> Vec<u8> {
    let mut out = Vec::with_capacity(sections.len() * 112 + 2);
    let mut digits = [0u8; 64];
    out.push(b'{');
    for (position, (name, section)) in sections.iter().enumerate() {
        if position > 0 {
            out.push(b',');
        }
        name.write_json(&mut out);
        hex::encode_to_slice(section.digest().0, &mut digits).expect("64 digits for 32 bytes");
        out.extend_from_slice(b":\"");
        out.extend_from_slice(&digits);
        out.push(b'"');
    }
    out.push(b'}');
    out
}
