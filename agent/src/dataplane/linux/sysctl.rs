//! The sysctls forwarding needs (DATAPLANE.md "Ownership").
//!
//! Plain synchronous file access on purpose: `/proc/sys/net` answers for
//! the network namespace of the thread that opens it, and an async file
//! API would open it on some other (blocking-pool) thread.

use std::path::Path;

use crate::dataplane::DataplaneError;

/// (sysctl name, wanted value).
pub const NEEDED: [(&str, &str); 4] = [
    ("net.ipv4.ip_forward", "1"),
    ("net.ipv6.conf.all.forwarding", "1"),
    ("net.bridge.bridge-nf-call-iptables", "1"),
    ("net.bridge.bridge-nf-call-ip6tables", "1"),
];

fn path_of(name: &str) -> String {
    format!("/proc/sys/{}", name.replace('.', "/"))
}

/// Check each needed sysctl; set it when `manage`. Returns notes on what
/// is (still) not as needed; errors only when setting fails.
pub fn ensure(manage: bool) -> Result<Vec<String>, DataplaneError> {
    let mut notes = Vec::new();
    for (name, wanted) in NEEDED {
        let path = path_of(name);
        if !Path::new(&path).exists() {
            notes.push(format!("{name} does not exist (module not loaded?)"));
            continue;
        }
        let current = std::fs::read_to_string(&path).map_err(|source| DataplaneError::Sysctl {
            name: name.to_string(),
            source,
        })?;
        if current.trim() == wanted {
            continue;
        }
        if !manage {
            notes.push(format!("{name} is {} (needs {wanted})", current.trim()));
            continue;
        }
        std::fs::write(&path, wanted).map_err(|source| match source.kind() {
            std::io::ErrorKind::PermissionDenied => DataplaneError::PermissionDenied {
                operation: format!("setting {name}"),
            },
            _ => DataplaneError::Sysctl {
                name: name.to_string(),
                source,
            },
        })?;
    }
    Ok(notes)
}
