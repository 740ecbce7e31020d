//! Who made a request, and what they may see (docs/protocol.md "Who may see what").

use std::time::SystemTime;

/// The authenticated caller of a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    /// The access key id that signed the request (`ASIA…` when temporary).
    pub access_key_id: String,
    /// The long-term key the credentials come from (equal to
    /// `access_key_id` for long-term keys).
    pub source_key_id: String,
    /// The node this key is bound to, if any.
    pub node: Option<String>,
    /// Admin keys (and credentials assumed from them) may read anything.
    pub admin: bool,
    /// True for credentials obtained through AssumeRole.
    pub temporary: bool,
    /// When temporary credentials expire.
    pub expiration: Option<SystemTime>,
}

impl Principal {
    /// May this caller read `node_id`'s view? A node-bound key reads its own
    /// node only; unbound and admin keys read any node.
    pub fn may_describe(&self, node_id: &str) -> bool {
        self.admin || self.node.as_deref().is_none_or(|n| n == node_id)
    }

    /// May this caller call `DescribeNodeStatus`? Admin keys only.
    pub fn may_read_status(&self) -> bool {
        self.admin
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(node: Option<&str>, admin: bool) -> Principal {
        Principal {
            access_key_id: "AKID".into(),
            source_key_id: "AKID".into(),
            node: node.map(str::to_owned),
            admin,
            temporary: false,
            expiration: None,
        }
    }

    #[test]
    fn least_privilege() {
        let bound = p(Some("nc-1"), false);
        assert!(bound.may_describe("nc-1"));
        assert!(!bound.may_describe("nc-2"));
        assert!(!bound.may_read_status());
        let unbound = p(None, false);
        assert!(unbound.may_describe("nc-2"));
        assert!(!unbound.may_read_status());
        let admin = p(Some("nc-1"), true);
        assert!(admin.may_describe("nc-2"));
        assert!(admin.may_read_status());
    }
}
