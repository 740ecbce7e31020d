//! The sysctls forwarding needs (docs/dataplane.md "Ownership").
//!
//! Plain synchronous file access on purpose: `/proc/sys/net` answers for
//! the network namespace of the thread that opens it, and an async file
//! API would open it on some other (blocking-pool) thread.
//!
//! Nothing here fails an apply: a sysctl that is off, missing or cannot be
//! written (a read-only `/proc/sys`, as systemd's `ProtectKernelTunables`
//! makes it) is reported, and the rest is applied anyway.

use std::path::Path;

use crate::dataplane::SysctlCheck;

/// (sysctl name, wanted value, whether instances lose their traffic or
/// their security groups without it).
pub const NEEDED: [(&str, &str, bool); 4] = [
    ("net.ipv4.ip_forward", "1", true),
    ("net.ipv6.conf.all.forwarding", "1", false),
    ("net.bridge.bridge-nf-call-iptables", "1", true),
    ("net.bridge.bridge-nf-call-ip6tables", "1", false),
];

fn path_of(name: &str) -> String {
    format!("/proc/sys/{}", name.replace('.', "/"))
}

/// Checks each needed sysctl, setting it first when `manage`.
pub fn ensure(manage: bool) -> Vec<SysctlCheck> {
    NEEDED
        .iter()
        .map(|&(name, wanted, critical)| SysctlCheck {
            name: name.to_string(),
            critical,
            problem: problem_of(name, wanted, manage),
        })
        .collect()
}

/// What is wrong with one sysctl, after setting it when `manage`.
fn problem_of(name: &str, wanted: &str, manage: bool) -> Option<String> {
    let path = path_of(name);
    if !Path::new(&path).exists() {
        return Some(if name.starts_with("net.bridge.") {
            "does not exist (the br_netfilter module is not loaded)".to_string()
        } else {
            "does not exist".to_string()
        });
    }
    let current = match std::fs::read_to_string(&path) {
        Ok(value) => value.trim().to_string(),
        Err(error) => return Some(format!("cannot be read: {error}")),
    };
    if current == wanted {
        return None;
    }
    if !manage {
        return Some(format!("is {current}, needs {wanted}"));
    }
    match std::fs::write(&path, wanted) {
        Ok(()) => None,
        Err(error) => Some(format!(
            "is {current}, needs {wanted}; cannot set it: {error}"
        )),
    }
}
