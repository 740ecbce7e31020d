//! Wire facts of `DescribeNetworkModel` that the server and the agent must
//! agree on (docs/protocol.md), kept in one place so the two cannot drift.

use std::time::Duration;

/// The only API version of the contract.
pub const API_VERSION: &str = "2026-11-01";

/// `WaitSeconds` when the client gives none.
pub const DEFAULT_WAIT_SECONDS: u64 = 30;

/// A client's retry backoff after a failed poll: full jitter, doubling
/// from this first cap...
pub const RETRY_BACKOFF_MIN: Duration = Duration::from_millis(500);
/// ...to this ceiling. A server's `Retry-After` is honoured up to it.
pub const RETRY_BACKOFF_MAX: Duration = Duration::from_secs(30);

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
}
