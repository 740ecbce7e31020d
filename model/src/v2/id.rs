//! The wire facts of protocol version 2 that both ends share, and the one
//! strict reading of a `StateId` (docs/protocol.md, "Version 2").

use serde::de::value::{Error as ValueError, StringDeserializer};
use serde::Deserialize;
use sha2::{Digest as _, Sha256};

use crate::canonical::StateId;

/// The `Version` parameter that asks for version 2 answers.
pub const API_VERSION_V2: &str = "2027-01-01";

/// The prefix of a version 2 state id; [`StateId::PREFIX`] is version 1's.
pub const V2_PREFIX: &str = "v2-";

/// How many lowercase hex digits follow the prefix, in both versions.
pub const ID_HEX_DIGITS: usize = 32;

/// Which definition an id was made by.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum IdVersion {
    /// SHA-256 of the whole view's canonical JSON.
    V1,
    /// SHA-256 of the view's manifest.
    V2,
}

/// A `StateId` text that is not `v1-` or `v2-` and 32 lowercase hex digits.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("StateId {shown:?} is not v1- or v2- followed by 32 lowercase hex digits")]
pub struct InvalidStateId {
    /// The text, cut to a length fit for a log line.
    pub shown: String,
}

/// Reads a `StateId` as the wire carries it: `v1-` or `v2-` and exactly 32
/// lowercase hex digits, nothing else. Both ends use this one reading.
pub fn parse_state_id(text: &str) -> Result<StateId, InvalidStateId> {
    if version_of(text).is_some() {
        Ok(state_id_from_checked(text.to_owned()))
    } else {
        Err(InvalidStateId {
            shown: crate::protocol::truncate_utf8(text, 80).to_owned(),
        })
    }
}

/// The version of a well-formed id, `None` for any other text.
pub fn version_of(text: &str) -> Option<IdVersion> {
    let (version, digits) = if let Some(digits) = text.strip_prefix(StateId::PREFIX) {
        (IdVersion::V1, digits)
    } else if let Some(digits) = text.strip_prefix(V2_PREFIX) {
        (IdVersion::V2, digits)
    } else {
        return None;
    };
    let hex = digits.len() == ID_HEX_DIGITS
        && digits
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
    hex.then_some(version)
}

/// The v2 id of a manifest given as its RFC 8785 text.
pub fn v2_id_of_manifest_json(manifest_json: &[u8]) -> StateId {
    let digest = Sha256::digest(manifest_json);
    let text = format!("{V2_PREFIX}{}", hex::encode(&digest[..ID_HEX_DIGITS / 2]));
    state_id_from_checked(text)
}

/// `StateId`'s field is private to `canonical`, which only makes v1 ids;
/// its transparent serde form is the one way in from here, and every text
/// reaching this has passed [`version_of`].
fn state_id_from_checked(text: String) -> StateId {
    debug_assert!(version_of(&text).is_some(), "{text}");
    StateId::deserialize(StringDeserializer::<ValueError>::new(text))
        .expect("a string deserialises into the transparent StateId")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_of_both_versions_parse_and_nothing_else_does() {
        let hex = "0123456789abcdef0123456789abcdef";
        assert_eq!(version_of(&format!("v1-{hex}")), Some(IdVersion::V1));
        let v2 = parse_state_id(&format!("v2-{hex}")).unwrap();
        assert_eq!(v2.as_str(), format!("v2-{hex}"));
        for bad in [
            "",
            "v1-",
            "v3-0123456789abcdef0123456789abcdef",
            "v2-0123456789ABCDEF0123456789abcdef",
            "v2-0123456789abcdef0123456789abcde",
            "v2-0123456789abcdef0123456789abcdef0",
            "v2-0123456789abcdef0123456789abcdeg",
            " v2-0123456789abcdef0123456789abcdef",
            "V2-0123456789abcdef0123456789abcdef",
        ] {
            assert!(parse_state_id(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn a_long_bad_id_is_cut_in_the_error() {
        let error = parse_state_id(&"x".repeat(10_000)).unwrap_err();
        assert_eq!(error.shown.len(), 80);
    }

    #[test]
    fn the_v2_id_is_the_prefix_and_half_the_digest() {
        // sha256("{}") = 44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a
        assert_eq!(
            v2_id_of_manifest_json(b"{}").as_str(),
            "v2-44136fa355b3678a1146ad16f7e8649e"
        );
    }
}
