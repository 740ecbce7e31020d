//! Canonical JSON (RFC 8785) of views and the content-addressed state id.
//!
//! The model types declare their fields in the byte order of their names and
//! hold no floats, so `serde_json`'s compact writer already produces JCS for
//! them (its string escapes are JCS's). `tests/views.rs` checks every view
//! against an independent JCS writer over `serde_json::Value`.

use std::fmt;
use std::io::{self, Write};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::addr::sort_numerically;
use crate::types::{Instance, NodeView, Route};

/// `v1-` and the first 32 lowercase hex digits of the SHA-256 of a view's
/// canonical JSON. Opaque to clients: compare for equality only.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct StateId(String);

impl StateId {
    pub const PREFIX: &'static str = "v1-";

    pub fn of_canonical_json(canonical: &[u8]) -> Self {
        Self::from_digest(Sha256::digest(canonical).into())
    }

    fn from_digest(digest: [u8; 32]) -> Self {
        StateId(format!("{}{}", Self::PREFIX, hex::encode(&digest[..16])))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for StateId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl PartialEq<str> for StateId {
    fn eq(&self, other: &str) -> bool {
        self.0 == other
    }
}

/// Hashes what is written to it, so a view is hashed without being held.
#[derive(Default)]
pub(crate) struct HashingWriter(Sha256);

impl HashingWriter {
    pub fn finish(self) -> StateId {
        StateId::from_digest(self.0.finalize().into())
    }
}

impl Write for HashingWriter {
    fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
        self.0.update(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// The compact serialisation of a value whose type is declared in JCS order.
pub(crate) fn to_canonical_vec<T: Serialize>(value: &T) -> Vec<u8> {
    serde_json::to_vec(value).expect("model types serialise without error")
}

/// docs/model.md's route order: destination, gateway, device, each as written,
/// bytewise, absent first; a stable sort keeps the model's order on ties.
pub(crate) fn route_order(a: &Route, b: &Route) -> std::cmp::Ordering {
    (&a.destination, &a.gateway, &a.device).cmp(&(&b.destination, &b.gateway, &b.device))
}

/// An instance as a view carries it: its group list sorted by id.
pub(crate) fn canonical_instance(instance: &Instance) -> std::borrow::Cow<'_, Instance> {
    let sorted = instance
        .security_groups
        .as_ref()
        .is_none_or(|groups| groups.is_sorted());
    if sorted {
        std::borrow::Cow::Borrowed(instance)
    } else {
        let mut owned = instance.clone();
        if let Some(groups) = owned.security_groups.as_mut() {
            groups.sort();
        }
        std::borrow::Cow::Owned(owned)
    }
}

impl NodeView {
    /// Puts every list in docs/model.md's canonical order. Views made by
    /// [`crate::view_for`] already are; a view read from the wire may not be.
    pub fn canonicalize(&mut self) {
        sort_numerically(&mut self.public_ips);
        self.subnets.sort_by(|a, b| a.id.cmp(&b.id));
        self.instances.sort_by(|a, b| a.id.cmp(&b.id));
        for instance in &mut self.instances {
            if let Some(groups) = instance.security_groups.as_mut() {
                groups.sort();
            }
        }
        self.security_groups.sort_by(|a, b| a.id.cmp(&b.id));
        for members in self.group_members.values_mut() {
            sort_numerically(members);
        }
        self.routes.sort_by(route_order);
    }

    /// The RFC 8785 text of this view, canonicalised first.
    pub fn canonical_json(&self) -> Vec<u8> {
        let mut view = self.clone();
        view.canonicalize();
        to_canonical_vec(&view)
    }

    pub fn state_id(&self) -> StateId {
        StateId::of_canonical_json(&self.canonical_json())
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn state_id_is_v1_and_32_hex_digits() {
        let id = super::StateId::of_canonical_json(b"{}");
        // sha256("{}") = 44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a
        assert_eq!(id.as_str(), "v1-44136fa355b3678a1146ad16f7e8649e");
    }

    /// JCS escapes only `"`, `\` and control characters, the usual ones in
    /// their short form; `/` and non-ASCII text stay as they are.
    #[test]
    fn escapes_match_jcs() {
        let text = "tab\tquote\"back\\slash/ctl\u{1}\u{1f}é€😀";
        let ours = String::from_utf8(super::to_canonical_vec(&text)).unwrap();
        assert_eq!(
            ours,
            "\"tab\\tquote\\\"back\\\\slash/ctl\\u0001\\u001fé€😀\""
        );
    }
}
