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

/// Lines that occur more than once within one block of an `nft -a` listing
/// (handles stripped), and `ip route` lines that occur twice: what a
/// restarted agent that re-added instead of adopting would leave behind.
pub fn duplicates(snapshot: &Snapshot) -> Vec<String> {
    let mut found = Vec::new();
    for listing in [&snapshot.nft_inet, &snapshot.nft_bridge] {
        let mut block: Vec<String> = Vec::new();
        for line in listing.lines() {
            let line = line
                .split(" # handle")
                .next()
                .unwrap_or(line)
                .trim()
                .to_owned();
            if line.ends_with('{') || line == "}" {
                block.clear();
            } else if !line.is_empty() && block.contains(&line) {
                found.push(line);
            } else {
                block.push(line);
            }
        }
    }
    let mut routes: Vec<&str> = Vec::new();
    for line in snapshot.routes.lines() {
        if routes.contains(&line) {
            found.push(line.to_owned());
        }
        routes.push(line);
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snapshot(nft: &str, routes: &str) -> Snapshot {
        Snapshot {
            nft_inet: nft.into(),
            nft_bridge: String::new(),
            routes: routes.into(),
            addresses: String::new(),
        }
    }

    #[test]
    fn duplicates_are_found_within_a_chain_only() {
        let nft = "chain a { # handle 1\n\tdrop # handle 2\n}\nchain b { # handle 3\n\tdrop # handle 4\n\tdrop # handle 5\n}\n";
        assert_eq!(duplicates(&snapshot(nft, "")), ["drop"]);
        let routes = "10.1.0.0/16 via 1.2.3.4\n10.1.0.0/16 via 1.2.3.4\n";
        assert_eq!(duplicates(&snapshot("", routes)).len(), 1);
        assert!(duplicates(&snapshot("chain a {\n\tdrop\n}\nchain b {\n\tdrop\n}", "")).is_empty());
    }
}
