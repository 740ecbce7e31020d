//! Unique, short names for namespaces, and the sweep of leftovers.
//!
//! A namespace is named `ee<pid>-<seq><role>`: the PID of the test process
//! that owns it (so a later run can tell a leftover of a killed run from a
//! namespace of a run still going on in parallel) and a per-process sequence
//! number (so tests in one process never collide). Interfaces are created
//! inside the namespaces they live in, never in the root namespace, so their
//! names (`br0`, `eth0`, `vn_<id>`) only have to be unique per namespace.

use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Once;

/// Every namespace of this suite starts with this.
pub const NETNS_PREFIX: &str = "ee";

static NEXT_SEQ: AtomicU32 = AtomicU32::new(1);
static SWEEP: Once = Once::new();

/// A fresh prefix for one test's namespaces, e.g. `ee4711-3`.
pub fn test_prefix() -> String {
    SWEEP.call_once(sweep_leftovers);
    let seq = NEXT_SEQ.fetch_add(1, Ordering::Relaxed);
    format!("{NETNS_PREFIX}{}-{seq}", std::process::id())
}

/// The PID encoded in a namespace name of ours, if it is one.
pub fn owner_pid(netns_name: &str) -> Option<u32> {
    let rest = netns_name.strip_prefix(NETNS_PREFIX)?;
    let (pid, _) = rest.split_once('-')?;
    pid.parse().ok()
}

fn pid_alive(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

/// Removes namespaces of ours whose owning process is gone, after killing
/// the processes (our agents and servers) a killed run left inside them.
pub fn sweep_leftovers() {
    for name in list_netns() {
        let Some(pid) = owner_pid(&name) else {
            continue;
        };
        if pid_alive(pid) {
            continue;
        }
        for orphan in netns_pids(&name) {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(orphan),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
        let _ = Command::new("ip").args(["netns", "delete", &name]).status();
    }
}

/// Names of all named network namespaces.
pub fn list_netns() -> Vec<String> {
    let Ok(out) = Command::new("ip").args(["netns", "list"]).output() else {
        return Vec::new();
    };
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().next().map(str::to_owned))
        .collect()
}

fn netns_pids(name: &str) -> Vec<i32> {
    let Ok(out) = Command::new("ip").args(["netns", "pids", name]).output() else {
        return Vec::new();
    };
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn owner_pid_reads_our_names_only() {
        assert_eq!(owner_pid("ee4711-3nc1"), Some(4711));
        assert_eq!(owner_pid("ee4711-12cloud"), Some(4711));
        assert_eq!(owner_pid("other"), None);
        assert_eq!(owner_pid("eex-1"), None);
    }

    #[test]
    fn prefixes_are_unique_and_carry_our_pid() {
        let a = test_prefix();
        let b = test_prefix();
        assert_ne!(a, b);
        assert_eq!(owner_pid(&format!("{a}x")), Some(std::process::id()));
    }
}
