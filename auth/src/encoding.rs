//! The one SigV4 query encoding, which signing and verifying must agree on.

/// Percent-encodes a query parameter the SigV4 way (everything but
/// `A-Za-z0-9-_.~`), so the wire form is already canonical.
pub fn encode_param(s: &str) -> String {
    percent_encoding::utf8_percent_encode(s, SIGV4_QUERY).to_string()
}

const SIGV4_QUERY: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~');
