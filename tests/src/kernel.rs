//! Reading back what edgenetd programmed in a node namespace.

use anyhow::Result;
use serde_json::Value;

use crate::netns::Netns;

/// Everything edgenetd owns on a node, as text with nft rule handles.
/// Handles change whenever a rule or chain is rewritten, so two equal
/// snapshots mean nothing was touched in between, not merely that the end
/// result looks the same.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Snapshot {
    pub nft_inet: String,
    pub nft_bridge: String,
    pub routes: String,
    pub addresses: String,
}

impl Snapshot {
    pub fn take(node: &Netns) -> Result<Snapshot> {
        Ok(Snapshot {
            nft_inet: nft_table(node, "inet")?,
            nft_bridge: nft_table(node, "bridge")?,
            routes: node.ip(&["route", "show", "table", "all", "proto", "159"])?,
            addresses: owned_addresses(&node.ip(&["-o", "addr", "show"])?),
        })
    }

    /// A readable account of what differs, for assertion messages.
    pub fn describe_difference(&self, other: &Snapshot) -> String {
        let parts = [
            ("nft inet edgenet", &self.nft_inet, &other.nft_inet),
            ("nft bridge edgenet", &self.nft_bridge, &other.nft_bridge),
            ("routes proto 159", &self.routes, &other.routes),
            ("addresses", &self.addresses, &other.addresses),
        ];
        parts
            .iter()
            .filter(|(_, a, b)| a != b)
            .map(|(what, a, b)| format!("--- {what} before:\n{a}\n--- after:\n{b}"))
            .collect::<Vec<_>>()
            .join("\n")
    }
}

/// The address lines edgenetd could own: link-local IPv6 addresses (made
/// by the kernel, with DAD flags that flip on their own) are left out.
fn owned_addresses(text: &str) -> String {
    text.lines()
        .filter(|l| !l.contains("scope link"))
        .map(|l| l.replace(" tentative", ""))
        .collect::<Vec<_>>()
        .join("\n")
}

/// `nft -a list table <family> edgenet`, or empty when the table is absent.
pub fn nft_table(node: &Netns, family: &str) -> Result<String> {
    let out = node.exec_unchecked("nft", &["-a", "list", "table", family, "edgenet"])?;
    Ok(if out.status.success() {
        String::from_utf8_lossy(&out.stdout).into_owned()
    } else {
        String::new()
    })
}

/// The text of one chain of `inet edgenet`, or empty when absent.
pub fn nft_chain(node: &Netns, chain: &str) -> Result<String> {
    let out = node.exec_unchecked("nft", &["list", "chain", "inet", "edgenet", chain])?;
    Ok(if out.status.success() {
        String::from_utf8_lossy(&out.stdout).into_owned()
    } else {
        String::new()
    })
}

/// Routes of protocol `proto` (a number or name) in the main table, as JSON.
pub fn routes(node: &Netns, selector: &[&str]) -> Result<Vec<Value>> {
    let mut args = vec!["-j", "route", "show"];
    args.extend_from_slice(selector);
    let text = node.ip(&args)?;
    Ok(serde_json::from_str::<Vec<Value>>(&text).unwrap_or_default())
}

/// True when an address `cidr` (e.g. `10.1.0.1/16`) is on `dev`.
pub fn has_address(node: &Netns, dev: &str, cidr: &str) -> Result<bool> {
    let text = node.ip(&["-o", "addr", "show", "dev", dev])?;
    Ok(text.split_whitespace().any(|w| w == cidr))
}
