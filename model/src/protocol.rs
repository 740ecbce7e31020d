//! Wire facts of `DescribeNetworkModel` that the server and the agent must
//! agree on (docs/protocol.md), kept in one place so the two cannot drift.

use std::time::Duration;

/// The only API version of the contract.
pub const API_VERSION: &str = "2026-11-01";

/// `WaitSeconds` when the client gives none.
pub const DEFAULT_WAIT_SECONDS: u32 = 30;

/// The `Error.Code`s of docs/protocol.md that a client acts on: the server
/// answers with them and the agent reads them, so both take them from here.
pub mod error_code {
    pub const MISSING_PARAMETER: &str = "MissingParameter";
    pub const INVALID_PARAMETER_VALUE: &str = "InvalidParameterValue";
    pub const INVALID_ACTION: &str = "InvalidAction";
    pub const UNAUTHORIZED_OPERATION: &str = "UnauthorizedOperation";
    /// The node is not in the model (yet): keep the applied state, retry later.
    pub const NODE_NOT_FOUND: &str = "InvalidNodeId.NotFound";
    pub const REQUEST_LIMIT_EXCEEDED: &str = "RequestLimitExceeded";
    pub const INTERNAL_ERROR: &str = "InternalError";
    /// The signature's credentials are not (or no longer) accepted: refresh
    /// them and retry once.
    pub const AUTH_FAILURE: &str = "AuthFailure";
    pub const EXPIRED_TOKEN: &str = "ExpiredToken";
}

/// A client's retry backoff after a failed poll: full jitter, doubling
/// from this first cap...
pub const RETRY_BACKOFF_MIN: Duration = Duration::from_millis(500);
/// ...to this ceiling. A server's `Retry-After` is honoured up to it.
pub const RETRY_BACKOFF_MAX: Duration = Duration::from_secs(30);

/// A poll answered sooner than this without a change (the id the client
/// holds, a 304, an unusable answer) is counted as a failure for the
/// retry backoff: a real server holds such a poll for `WaitSeconds`
/// (docs/protocol.md), so only a broken or hostile one answers that fast,
/// and answering at once must not drive the client into a poll storm.
pub const MIN_QUIET_POLL: Duration = Duration::from_secs(1);

/// The prefixes of the state id versions (docs/protocol.md): `v1-` hashes
/// the view, `v2-` its manifest.
pub const STATE_ID_PREFIXES: [&str; 2] = [crate::canonical::StateId::PREFIX, crate::v2::V2_PREFIX];
/// Lowercase hex digits after the prefix.
pub const STATE_ID_HEX_DIGITS: usize = crate::v2::ID_HEX_DIGITS;
/// The length of every valid state id.
pub const STATE_ID_LEN: usize = 3 + STATE_ID_HEX_DIGITS;

/// Whether `text` is a state id in the exact grammar: `v1-` or `v2-`, then
/// exactly 32 lowercase hex digits. Checked before an id from anywhere (a
/// server, the kernel) is stored, written or sent, so nothing longer or
/// stranger reaches a URI, an nft comment or a netlink attribute.
pub fn is_valid_state_id(text: &str) -> bool {
    crate::v2::version_of(text).is_some()
}

/// Why a text is not a state id, in a form that names it without quoting
/// all of a hostile one.
pub fn state_id_problem(text: &str) -> Option<String> {
    if is_valid_state_id(text) {
        return None;
    }
    Some(format!(
        "{:?}{} ({} bytes) is not a state id (v1- or v2- and {STATE_ID_HEX_DIGITS} lowercase hex digits)",
        truncate_utf8(text, 48),
        if text.len() > 48 { "…" } else { "" },
        text.len()
    ))
}

/// The agent sends at most this many bytes of `ApplyError`, and a server
/// cuts longer text to it.
pub const MAX_APPLY_ERROR_BYTES: usize = 1024;

/// The longest prefix of `text` of at most `max` bytes that ends on a
/// character boundary.
pub fn truncate_utf8(text: &str, max: usize) -> &str {
    if text.len() <= max {
        return text;
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn apply_errors_are_cut_on_a_character_boundary() {
        let long = "é".repeat(600); // 1,200 bytes
        assert_eq!(truncate_utf8(&long, MAX_APPLY_ERROR_BYTES).len(), 1024);
        let odd = format!("a{long}");
        let cut = truncate_utf8(&odd, MAX_APPLY_ERROR_BYTES);
        assert_eq!(cut.len(), 1023);
        assert!(odd.starts_with(cut));
        assert_eq!(truncate_utf8("abc", 2), "ab");
        assert_eq!(truncate_utf8("aé", 2), "a");
        assert_eq!(truncate_utf8("short", 1024), "short");
    }

    #[test]
    fn state_ids_follow_the_exact_grammar() {
        let hex = "0123456789abcdef0123456789abcdef";
        assert!(is_valid_state_id(&format!("v1-{hex}")));
        assert!(is_valid_state_id(&format!("v2-{hex}")));
        assert_eq!(format!("v1-{hex}").len(), STATE_ID_LEN);
        let refused = [
            String::new(),
            "v1-".into(),
            format!("v3-{hex}"),
            format!("V1-{hex}"),
            format!("v1-{}", hex.to_uppercase()),
            format!("v1-{}", &hex[1..]),
            format!("v1-{hex}0"),
            format!("v1-{}g", &hex[1..]),
            format!("v1-{}", "f".repeat(65_576)),
            format!(" v1-{hex}"),
            format!("v1-{}é", &hex[2..]),
        ];
        for id in &refused {
            assert!(!is_valid_state_id(id), "{id:?} accepted");
            let problem = state_id_problem(id).unwrap();
            assert!(problem.len() < 200, "{problem}");
        }
        assert_eq!(state_id_problem(&format!("v2-{hex}")), None);
    }
}
