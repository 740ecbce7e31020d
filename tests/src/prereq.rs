//! What the suite needs from the machine; a missing piece fails the test
//! with the reason (never a silent skip, never a pass).

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Result};

/// Fails unless we are root and `ip`, `nft`, `ping`, `sysctl` work.
pub fn require_machine() -> Result<()> {
    if !nix::unistd::geteuid().is_root() {
        bail!("the end-to-end suite needs root (network namespaces, nftables): run it as root");
    }
    for tool in ["ip", "nft", "ping", "sysctl"] {
        let found = Command::new(tool).arg("-V").output().is_ok()
            || Command::new(tool).arg("--version").output().is_ok();
        if !found {
            bail!("`{tool}` is missing: run tests/setup.sh (installs nftables iproute2 iputils-ping procps)");
        }
    }
    Ok(())
}

/// Where the workspace's binaries are: `$EDGENET_BIN_DIR`, else
/// `<workspace>/target/debug` (or `$CARGO_TARGET_DIR/debug`).
pub fn bin_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("EDGENET_BIN_DIR") {
        return PathBuf::from(dir);
    }
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target"));
    target.join("debug")
}

/// The path of binary `name`, or an error telling how to build it.
pub fn require_binary(name: &str) -> Result<PathBuf> {
    let path = bin_dir().join(name);
    if !path.is_file() {
        bail!(
            "{} not found: build the binaries first with `cargo build --bins` \
             (or point EDGENET_BIN_DIR at them)",
            path.display()
        );
    }
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_binary_says_how_to_build_it() {
        let err = require_binary("no-such-edgenet-binary")
            .unwrap_err()
            .to_string();
        assert!(err.contains("cargo build --bins"), "{err}");
    }
}
