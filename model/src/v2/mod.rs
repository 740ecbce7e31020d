//! Protocol version 2: views cut into sections, manifest ids and verified
//! deltas (docs/protocol.md, "Version 2").
//!
//! A canonical view is cut into sections: `schema`, `node`, `metadata` (only
//! when the view has one), `public_ips`, `subnets`, `routes`, `instances`,
//! one `security_groups/<id>` per group and one `group_members/<id>` per
//! member list. A section's digest is the SHA-256 of its value's RFC 8785
//! JSON; the manifest maps names to digests; the v2 id is `v2-` and the
//! first 32 hex digits of the SHA-256 of the manifest's RFC 8785 JSON.
//!
//! # Sharing
//! A [`Section`] is a handle (`Arc`) on a value, its canonical JSON and its
//! digest, made once by [`Section::new`]. Every view that holds the same
//! group, member list or subnets can hold the same handle: a server builds
//! the sections a change touches once and assembles each affected view with
//! [`SectionedView::from_sections`], which hashes nothing but the manifest.
//! Deltas hold handles too, and [`MemberDiffs`] lets one change's member-list
//! comparisons serve every view that shares the list. An agent applies a
//! [`Delta`] with [`SectionedView::apply`], which hashes only the sections
//! the delta names and refuses a result whose id is not the one announced.
//!
//! The canonical JSON used for every digest is the model's own
//! (`crate::canonical`): the model types serialise in RFC 8785 order.

mod delta;
mod error;
mod id;
mod section;
mod sectioned;
mod wire;

pub use delta::{Delta, DeltaAnswer, MemberDiffs, MembersChange};
pub use error::{DeltaError, SectionError};
pub use id::{
    parse_state_id, v2_id_of_manifest_json, version_of, IdVersion, InvalidStateId, API_VERSION_V2,
    ID_HEX_DIGITS, V2_PREFIX,
};
pub use section::{GroupId, Section, SectionDigest, SectionName, SectionValue};
pub use sectioned::{cut_view, SectionedView};
