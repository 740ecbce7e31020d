//! Bridges and veth pairs, always created inside namespaces.

use anyhow::{Context, Result};

use crate::netns::Netns;

/// Creates bridge `name` in `ns` and brings it up.
pub fn bridge(ns: &Netns, name: &str) -> Result<()> {
    ns.ip(&["link", "add", name, "type", "bridge"])?;
    // No STP/forwarding delay: ports forward the moment they come up.
    ns.ip(&["link", "set", name, "type", "bridge", "forward_delay", "0"])?;
    ns.ip(&["link", "set", name, "up"])?;
    Ok(())
}

/// Creates a veth pair `a_name` in `a` and `b_name` in `b`, both up.
/// The pair is created inside `a` (never in the root namespace) so names
/// cannot collide with another test's.
pub fn veth(a: &Netns, a_name: &str, b: &Netns, b_name: &str) -> Result<()> {
    a.ip(&[
        "link",
        "add",
        a_name,
        "type",
        "veth",
        "peer",
        "name",
        b_name,
        "netns",
        b.name(),
    ])
    .with_context(|| format!("veth {}:{a_name} <-> {}:{b_name}", a.name(), b.name()))?;
    a.ip(&["link", "set", a_name, "up"])?;
    b.ip(&["link", "set", b_name, "up"])?;
    Ok(())
}

/// Enslaves `port` to `bridge_name` in `ns`.
pub fn attach(ns: &Netns, port: &str, bridge_name: &str) -> Result<()> {
    ns.ip(&["link", "set", port, "master", bridge_name])?;
    Ok(())
}

/// Adds `cidr` (e.g. `10.1.0.11/16`) to `dev`.
pub fn address(ns: &Netns, dev: &str, cidr: &str) -> Result<()> {
    ns.ip(&["addr", "add", cidr, "dev", dev])?;
    Ok(())
}

/// Sets the MAC address of `dev`.
pub fn mac(ns: &Netns, dev: &str, mac: &str) -> Result<()> {
    ns.ip(&["link", "set", dev, "address", mac])?;
    Ok(())
}
